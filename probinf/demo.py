"""``probinf demo``: an end-to-end showcase on built-in data.

Each part of the library contributes one *step*: a function
``step(key, quick) -> DemoStep`` named in `STEPS` as ``"module:function"``.
Steps are imported lazily (so ``import probinf`` stays light), run in order,
print what they did, and each draws its panels into one shared PNG figure.
A step whose optional dependencies are missing raises `StepSkipped` with
the install hint, and the demo goes on.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax

__all__ = ["DemoStep", "StepSkipped", "STEPS", "run_demo"]

STEPS: list[str] = [
    "probinf._demo_vi:vi_step",
    "flows._demo:flows_step",
    "probinf.smc._demo:smc_step",
    "probinf.pcn._demo:pcn_step",
    "circuits._demo:circuits_step",
    "circuits._demo_pic:pic_step",
    "amortized._demo:amortized_step",
    "probinf.llm._demo:llm_step",
]


class StepSkipped(Exception):
    """Raised by a step that cannot run here (e.g. an optional extra is missing)."""


@dataclass
class DemoStep:
    """What one step reports: a title, lines of results, and panels to draw.

    ``panels`` are callables ``draw(ax)`` each filling one matplotlib axes.
    """

    title: str
    lines: list[str]
    panels: list[Callable] = field(default_factory=list)


def _load(spec: str) -> Callable:
    module_name, function_name = spec.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_demo(
    out: str | os.PathLike = "probinf-demo.png",
    *,
    seed: int = 0,
    quick: bool = False,
    only: Sequence[str] | None = None,
    print_fn: Callable[[str], None] = print,
) -> list[DemoStep]:
    """Run the demo steps, print their reports and write the figure to ``out``.

    Args:
        out: path of the PNG figure.
        seed: PRNG seed.
        quick: smaller problems (used by the tests).
        only: run only steps whose function name contains one of these strings.
        print_fn: where report lines go.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [s for s in STEPS if not only or any(o in s.split(":")[1] for o in only)]
    if not specs:
        names = ", ".join(s.split(":")[1] for s in STEPS)
        raise ValueError(f"`only` matched no demo step; steps are: {names}")
    key = jax.random.key(seed)
    reports: list[DemoStep] = []
    started = time.perf_counter()
    for index, spec in enumerate(specs):
        step_start = time.perf_counter()
        try:
            report = _load(spec)(jax.random.fold_in(key, index), quick)
        except StepSkipped as skipped:
            print_fn(f"\n== {spec.split(':')[1]}: skipped — {skipped}")
            continue
        reports.append(report)
        print_fn(f"\n== {report.title}  ({time.perf_counter() - step_start:.1f} s)")
        for line in report.lines:
            print_fn(f"   {line}")

    panels = [(r.title, p) for r in reports for p in r.panels]
    if panels:
        cols = min(3, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
        for ax, (_, draw) in zip(axes.flat, panels, strict=False):
            draw(ax)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.suptitle("probinf demo", y=0.995)
        fig.tight_layout(rect=(0, 0, 1, 0.985))  # leave room for the title
        fig.savefig(out, dpi=110)
        plt.close(fig)
        print_fn(f"\nFigure written to {os.path.abspath(out)}")
    print_fn(f"Demo finished in {time.perf_counter() - started:.1f} s.")
    return reports
