"""The ``probinf`` command (also ``python -m probinf``).

Subcommands are declared in `build_parser`; handlers import what they need
lazily, so ``probinf --help`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from probinf._version import __version__
from probinf.llm.base import LLMBackendError
from probinf.llm.cli import MissingExtraError, add_decode_parser
from probinf.llm.serve.cli import add_serve_parser
from probinf.xla_workaround import xla_cpu_workaround

__all__ = ["main", "build_parser"]


class _OneLineErrorParser(argparse.ArgumentParser):
    """Bad input prints one line, ``probinf: error: ...``, and exits with status 2."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"probinf {__version__}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import os

    from probinf.demo import run_demo

    # Checked now rather than after minutes of demo.
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise ValueError(f"--out: the folder {folder} does not exist (got --out {args.out})")
    run_demo(args.out, seed=args.seed, quick=args.quick, only=args.only)
    return 0


def _step_name(text: str) -> str:
    from probinf.demo import STEP_NAMES

    if text not in STEP_NAMES:
        raise argparse.ArgumentTypeError(f"unknown demo step {text!r}; the steps are: {', '.join(STEP_NAMES)}")
    return text


def _demo_steps_help() -> str:
    from probinf.demo import STEPS

    width = max(len(spec.name) for spec in STEPS)
    rows = "\n".join(f"  {spec.name:<{width}}  {spec.summary}" for spec in STEPS)
    return f"steps (in the order they run; pick some with --only):\n{rows}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="probinf",
        description="probinf: probabilistic inference and Bayesian modeling on JAX.",
    )
    parser.add_argument("--version", action="version", version=f"probinf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineErrorParser)

    version = sub.add_parser("version", help="print the version and exit")
    version.set_defaults(handler=_cmd_version)

    demo = sub.add_parser(
        "demo",
        help="run an end-to-end showcase on built-in data and write a figure",
        description="Run every part of the library on built-in data, print what each step measured\n"
        "next to the exact answer it is checked against, and write one PNG figure.",
        epilog=_demo_steps_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", default="probinf-demo.png", help="PNG file to write (default: %(default)s)")
    demo.add_argument("--seed", type=_positive_int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="smaller problems, for a fast check")
    demo.add_argument("--only", nargs="+", metavar="STEP", type=_step_name,
                      help="run only these steps (listed below), e.g. --only vi smc")
    demo.set_defaults(handler=_cmd_demo)

    add_decode_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probinf`` console script; returns the exit status."""
    xla_cpu_workaround()  # before any command starts JAX
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # A missing command is a usage error, as for argparse's required arguments: the
        # help goes to stderr and the status is 2, so a script that lost its command
        # fails; `probinf --help` is the way to ask for help (status 0).
        parser.print_help(sys.stderr)
        print(f"{parser.prog}: error: no COMMAND given (see above)", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError, LLMBackendError, MissingExtraError) as err:
        print(f"probinf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
