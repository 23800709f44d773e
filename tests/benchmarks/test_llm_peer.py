"""benchmarks/llm_peer.py: the its_hub side loads probinf's arithmetic verifier from its
source files, in an interpreter where probinf is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # as tests/conftest.py's REPO_ROOT
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.llm_peer import _PEER_SCRIPT  # noqa: E402


def test_peer_script_loads_the_verifier_without_probinf(tmp_path):
    import probinf.llm.rewards
    from probinf.llm.rewards import ArithmeticVerifier

    question = "Tom has 3 apples and gets 4 more. How many apples does Tom have now?"
    texts = ["3 + 4 = 7", "3 + 4 = 8\nThe answer is 8.", "He has 7 apples."]
    # The script up to its first use of its_hub, then the scores of the loaded verifier.
    loader = _PEER_SCRIPT.split("import its_hub", 1)[0]
    code = (loader +
            "print(json.dumps({'scores': arith.ArithmeticVerifier().score(config['question'], config['texts']),\n"
            "                  'site_packages': any('site-packages' in p for p in sys.path)}))\n")
    rewards = str(Path(probinf.llm.rewards.__file__).parent)
    # -I -S: no site-packages (so no probinf), no user site, no PYTHON* variables, no cwd.
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, rewards,
                          json.dumps({"question": question, "texts": texts})],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["site_packages"]
    assert result["scores"] == [float(s) for s in ArithmeticVerifier().score(question, texts)]
