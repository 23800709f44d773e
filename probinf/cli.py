"""The ``probinf`` command (also ``python -m probinf``).

Subcommands are declared in `build_parser`; handlers import what they need
lazily, so ``probinf --help`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from probinf._version import __version__
from probinf._xla_workaround import xla_cpu_workaround
from probinf.llm.base import LLMBackendError
from probinf.llm.cli import add_decode_parser

__all__ = ["main", "build_parser"]


class _OneLineErrorParser(argparse.ArgumentParser):
    """Bad input prints one line, ``probinf: error: ...``, and exits with status 2."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"probinf {__version__}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from probinf.demo import run_demo

    run_demo(args.out, seed=args.seed, quick=args.quick, only=args.only)
    return 0


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
        description="Run every part of the library on built-in data, print what each did "
        "and write one PNG figure.",
    )
    demo.add_argument("--out", default="probinf-demo.png", help="PNG file to write (default: %(default)s)")
    demo.add_argument("--seed", type=_positive_int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="smaller problems, for a fast check")
    demo.add_argument("--only", nargs="+", metavar="STEP", help="run only the named steps (e.g. vi)")
    demo.set_defaults(handler=_cmd_demo)

    add_decode_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probinf`` console script; returns the exit status."""
    xla_cpu_workaround()  # before any command starts JAX
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError, LLMBackendError) as err:
        print(f"probinf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
