"""``probinf demo``: an end-to-end showcase on built-in data.

Each part of the library contributes one *step*, registered in `STEPS` as a `DemoStepSpec`:
the name ``--only`` accepts, the ``"module:function"`` that runs it, the header printed
before it starts and a one-line summary for ``probinf demo --help``. A step is a function
``step(key, quick, progress=None) -> DemoStep``; it shows progress bars for its long loops
(on a terminal), and each of its report lines states what it measured next to the exact or
independent answer it is checked against. The steps live in `probinf.demos`, one module per
part, and are imported lazily, only when they run (so ``import probinf`` stays light and
``--only vi`` imports neither `circuits` nor `amortized`); each draws its panels into one
shared PNG figure. A step whose optional dependencies or data are missing raises
`StepSkipped` with the reason, and the demo goes on.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["DemoStep", "DemoStepSpec", "StepSkipped", "STEPS", "STEP_NAMES", "phase_bar", "run_demo"]


@dataclass(frozen=True)
class DemoStepSpec:
    """One registered demo step: ``name`` (what ``--only`` accepts), ``function``
    (``"module:function"``), ``title`` (its header) and ``summary`` (for ``--help``)."""

    name: str
    function: str
    title: str
    summary: str


STEPS: tuple[DemoStepSpec, ...] = (
    DemoStepSpec("vi", "probinf.demos.vi:vi_step", "Variational inference (probinf.vi)",
                 "full-rank Gaussian VI on eight schools vs the exact posterior and evidence"),
    DemoStepSpec("flows", "probinf.demos.flows:flows_step", "Normalizing flows (flows)",
                 "a spline flow fitted by VI to the U1 ring vs its exact log Z"),
    DemoStepSpec("smc", "probinf.demos.smc:smc_step", "Sequential Monte Carlo (probinf.smc)",
                 "particle filter vs the Kalman filter; tempered SMC vs a known Z"),
    DemoStepSpec("pcn", "probinf.demos.pcn:pcn_step", "Predictive coding (probinf.pcn)",
                 "PCN inference vs the exact posterior; PC vs backprop"),
    DemoStepSpec("circuits", "probinf.demos.circuits:circuits_step", "Probabilistic circuits (circuits)",
                 "a circuit learned on NLTCS; its queries vs brute-force enumeration"),
    DemoStepSpec("pic", "probinf.demos.pic:pic_step",
                 "Probabilistic integral circuits (circuits.integral)",
                 "quadrature circuits vs closed-form integrals"),
    DemoStepSpec("amortized", "probinf.demos.amortized:amortized_step",
                 "Amortized inference with a Distribution Transformer (amortized)",
                 "amortized posteriors vs exact mixture posteriors"),
    DemoStepSpec("llm", "probinf.demos.llm:llm_step", "Reward-guided LLM decoding (probinf.llm)",
                 "particle filtering with SmolLM2 vs the exact answer (needs the llm extra)"),
)
STEP_NAMES: tuple[str, ...] = tuple(spec.name for spec in STEPS)


class StepSkipped(Exception):
    """Raised by a step that cannot run here (e.g. an optional extra is missing)."""


@dataclass
class DemoStep:
    """What one step reports: lines of results and panels to draw.

    ``panels`` are callables ``draw(ax)`` each filling one matplotlib axes. ``title`` is
    filled in by `run_demo` from the step's `DemoStepSpec`.
    """

    lines: list[str]
    panels: list[Callable] = field(default_factory=list)
    title: str = ""


@contextlib.contextmanager
def phase_bar(total: int, *, desc: str, progress: bool | None = None):
    """A progress bar over a step's ``total`` phases, for steps without one long loop.

    Yields ``phase(name)``: call it as each phase starts; the bar counts the finished
    ones and shows the running one's name.
    """
    from probinf._progress import progress_bar

    # No rate in the format: phases are not comparable units of work.
    bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} phases [{elapsed}{postfix}]"
    with progress_bar(total=total, enabled=progress, desc=desc, bar_format=bar_format) as bar:
        started = False

        def phase(name: str) -> None:
            nonlocal started
            if started:
                bar.update(1)
            started = True
            bar.set_postfix_str(name)

        yield phase
        if started:
            bar.update(1)
            bar.set_postfix_str("done")


def _load(spec: str) -> Callable:
    module_name, function_name = spec.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def select_steps(only: Sequence[str] | None) -> list[DemoStepSpec]:
    """The registered steps named in ``only`` (all of them for ``None``), in demo order.

    Raises:
        ValueError: naming the unknown names and listing the accepted ones.
    """
    if only is None:
        return list(STEPS)
    if isinstance(only, str):
        only = [only]
    unknown = [name for name in only if name not in STEP_NAMES]
    if unknown or not only:
        raise ValueError(f"`only`: unknown demo step(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"the steps are: {', '.join(STEP_NAMES)}")
    return [spec for spec in STEPS if spec.name in only]


def _print_now(line: str) -> None:
    print(line, flush=True)  # a header must show before its step's long work, even when piped


def run_demo(
    out: str | os.PathLike = "probinf-demo.png",
    *,
    seed: int = 0,
    quick: bool = False,
    only: Sequence[str] | None = None,
    progress: bool | None = None,
    print_fn: Callable[[str], None] = _print_now,
) -> list[DemoStep]:
    """Run the demo steps, print their reports and write the figure to ``out``.

    Each step's header is printed before the step starts, then its progress bars (on
    stderr, by default only when it is a terminal), then its results.

    Args:
        out: path of the PNG figure.
        seed: PRNG seed.
        quick: smaller problems (used by the tests).
        only: names of the steps to run (see `STEP_NAMES`); ``None``: all.
        progress: show progress bars (``None``: only when stderr is a terminal).
        print_fn: where report lines go (flushed, so headers show up at once).
    """
    specs = select_steps(only)
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = jax.random.key(seed)
    reports: list[DemoStep] = []
    started = time.perf_counter()
    for index, spec in enumerate(specs):
        print_fn(f"\n== [{index + 1}/{len(specs)}] {spec.title}")
        step_start = time.perf_counter()
        # Keys follow the registry position, so `--only` reproduces the full demo's numbers.
        step_key = jax.random.fold_in(key, STEP_NAMES.index(spec.name))
        try:
            report = _load(spec.function)(step_key, quick, progress=progress)
        except StepSkipped as skipped:
            print_fn(f"   skipped: {skipped}")
            continue
        report.title = spec.title
        reports.append(report)
        for line in report.lines:
            print_fn(f"   {line}")
        print_fn(f"   ({time.perf_counter() - step_start:.1f} s)")

    panels = [p for r in reports for p in r.panels]
    if panels:
        cols = min(3, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
        for ax, draw in zip(axes.flat, panels, strict=False):
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
