"""Side-by-side with its_hub (the authors' library) on the same local OpenAI-compatible server.

its_hub only talks to OpenAI-compatible endpoints, so both libraries decode through one
llama-cpp-python server started here on 127.0.0.1 with the embedded model, on the same
problems, with the same budget N and the same exact verifier as process reward (its_hub
gets it through its ``AbstractProcessRewardModel`` interface). its_hub runs in its own
virtualenv (a subprocess), since it is not a dependency of probinf. Tooling, not part of
the installed library: run through ``python benchmarks/bench_llm.py --its-hub-python PATH``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

__all__ = ["compare_with_its_hub", "start_llama_server", "SMOLLM2_DEFAULT_SYSTEM"]

# What SmolLM2's chat template inserts when a conversation has no system message.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

_PEER_SCRIPT = r'''
import importlib.util, json, os, sys, time, types
# The verifier's three modules, loaded from probinf's source without installing probinf
# (the peer venv has its own packages): empty parent packages, then each module by path.
for parent in ("probinf", "probinf.llm", "probinf.llm.rewards"):
    sys.modules[parent] = types.ModuleType(parent)
for name in ("_lexer", "_evaluate", "arithmetic"):
    spec = importlib.util.spec_from_file_location(f"probinf.llm.rewards.{name}", os.path.join(sys.argv[1], f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
arith = sys.modules["probinf.llm.rewards.arithmetic"]
config = json.loads(sys.argv[2])
import its_hub
from its_hub.api.reward_models.prm import AbstractProcessRewardModel
from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel
from its_hub.core.lms.step_generation import StepGeneration
from its_hub.core.algorithms.particle_gibbs import ParticleFiltering

verifier = arith.ArithmeticVerifier()
calls = {"n": 0}

class Verifier(AbstractProcessRewardModel):
    def _one(self, question, text):
        calls["n"] += 1
        return verifier.score(question, [text])[0]
    def score(self, prompt_or_messages, steps):
        # its_hub passes the prompt and one text per particle (its steps joined).
        question = prompt_or_messages if isinstance(prompt_or_messages, str) else str(prompt_or_messages)
        return [self._one(question, s) for s in steps]
    async def ascore(self, prompt_or_messages, steps):
        return self.score(prompt_or_messages, steps)

lm = OpenAICompatibleLanguageModel(endpoint=config["url"], api_key="none", model_name="smollm2",
                                   max_tokens=config["max_step_tokens"], max_concurrency=1)
sg = StepGeneration(max_steps=config["max_steps"], step_token=config["delimiter"], temperature=config["temperature"],
                    stop_token=config.get("stop_token"))
pf = ParticleFiltering(sg, Verifier())
out = []
for problem in config["problems"]:
    start = time.perf_counter()
    error = None
    try:
        response = pf.infer(lm, problem["question"], budget=config["n"])
        text = response["content"] if isinstance(response, dict) else str(response)
    except Exception as err:  # recorded, not fatal
        text, error = "", f"{type(err).__name__}: {err}"
    out.append({"text": text, "seconds": time.perf_counter() - start, "error": error})
print(json.dumps({"version": its_hub.__version__, "results": out, "reward_calls": calls["n"]}))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(model_path: str, timeout: float = 180.0):
    """Start llama-cpp-python's OpenAI-compatible server on 127.0.0.1; returns ``(process, base_url)``."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1",
         # the numerics LlamaCppModel.from_path uses: logits independent of batch shape
         "--flash_attn", "true", "--n_ubatch", "32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the llama-cpp-python server did not start") from None
            time.sleep(0.5)


def compare_with_its_hub(its_hub_python: str, *, num_problems: int = 20, n: int = 4, seed: int = 0) -> dict:
    """Particle filtering of probinf and of its_hub, same server, problems, N and verifier."""
    import jax

    import probinf.llm.rewards
    from probinf.llm import OpenAICompletionsModel, particle_filter
    from probinf.llm.backends import smollm2_path
    from probinf.llm.problems import make_problems
    from probinf.llm.rewards import ArithmeticVerifier, lenient_answer

    try:
        from benchmarks.llm_bench import BENCH_CONFIG, _key
    except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
        from llm_bench import BENCH_CONFIG, _key

    problems = [{"question": p.question, "answer": p.answer}
                for p in make_problems(jax.random.key(seed), 100)][:num_problems]
    process, url = start_llama_server(smollm2_path())
    # The verifier's source files, which the peer's venv loads by path.
    arith = os.path.dirname(probinf.llm.rewards.__file__)
    config = {"url": url, "n": n, "max_steps": BENCH_CONFIG.max_steps,
              "max_step_tokens": BENCH_CONFIG.max_step_tokens,
              "delimiter": BENCH_CONFIG.delimiter, "temperature": BENCH_CONFIG.temperature,
              "stop_token": "answer is"}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_PEER_SCRIPT)
    ours, peer_results, peer_reward_calls, errors, version = [], [], 0, [], None
    try:
        model = OpenAICompletionsModel(url, timeout=300)
        for i, problem in enumerate(problems):
            # Problem by problem, alternating which library goes first, so that both meet
            # the same machine load (the machine is shared).
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                if side == 0:
                    # The server's chat template (used by its_hub) inserts SmolLM2's default
                    # system message; the completions backend's ChatML adds none unless asked.
                    result = particle_filter(
                        _key(seed, i, 99, n), model, problem["question"], ArithmeticVerifier(),
                        system=SMOLLM2_DEFAULT_SYSTEM, n_particles=n, config=BENCH_CONFIG,
                        answer_fn=lenient_answer, progress=False,
                    )
                    ours.append({"correct": result.answer == str(problem["answer"]),
                                 "budget": result.budget.as_dict()})
                    continue
                done = subprocess.run([its_hub_python, f.name, arith, json.dumps({**config, "problems": [problem]})],
                                      capture_output=True, text=True, timeout=3600)
                if done.returncode != 0:
                    errors.append(done.stderr[-1500:])
                    peer_results.append({"text": "", "seconds": float("nan"), "error": "crashed"})
                    continue
                peer = json.loads(done.stdout.strip().splitlines()[-1])
                peer_results.extend(peer["results"])
                peer_reward_calls += peer["reward_calls"]
                version = peer["version"]
    finally:
        os.unlink(f.name)
        process.terminate()
        process.wait(timeout=30)
    if len(errors) == len(problems):
        return {"error": errors[0], "problems": num_problems, "n": n}
    peer = {"version": version, "results": peer_results, "reward_calls": peer_reward_calls}
    peer_correct = [lenient_answer(r["text"]) == str(p["answer"]) for r, p in zip(peer["results"], problems, strict=True)]
    return {
        "setup": "both through one llama-cpp-python server on 127.0.0.1 (SmolLM2 GGUF), same problems "
                 "(the first of the main benchmark), N, step delimiter, temperature, max steps, prompt and "
                 "verifier; run problem by problem, alternating which library goes first",
        "caveat": "its_hub builds each step as a chat completion that continues the assistant message with "
                  "vLLM's continue_final_message; llama.cpp's server ignores that flag, so each of its_hub's "
                  "steps starts a new assistant turn. its_hub also stops a particle only at max_steps or at a "
                  "stop string ('answer is' here), and its completion requests carry no seed.",
        "problems": num_problems, "n": n, "its_hub_version": peer["version"],
        "probinf": {"accuracy": sum(o["correct"] for o in ours) / num_problems,
                    "seconds_per_problem": sum(o["budget"]["total_seconds"] for o in ours) / num_problems,
                    "tokens_per_problem": sum(o["budget"]["tokens"] for o in ours) / num_problems},
        "its_hub": {"accuracy": sum(peer_correct) / num_problems,
                    "seconds_per_problem": sum(r["seconds"] for r in peer["results"]) / num_problems,
                    "reward_calls_per_problem": peer["reward_calls"] / num_problems,
                    "errors": sum(r["error"] is not None for r in peer["results"]),
                    "first_error": next((r["error"] for r in peer["results"] if r["error"]), None)},
        "time_ratio_its_hub_over_probinf": (sum(r["seconds"] for r in peer["results"])
                                            / max(sum(o["budget"]["total_seconds"] for o in ours), 1e-9)),
        "its_hub_crashes": len(errors),
    }
