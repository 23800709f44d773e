"""The peer libraries' own virtualenvs for the benchmarks, built from the package index with pins.

Several benchmarks compare probinf with a library that cannot share its environment
(another jax, or torch): each such peer runs from its own virtualenv, in a subprocess, in
the same benchmark run. This script creates those virtualenvs, with exact versions::

    python benchmarks/peers.py --list                 # peers, pins, interpreters, what exists
    python benchmarks/peers.py                        # create every missing or outdated one
    python benchmarks/peers.py --only genjax pcx      # only these
    python benchmarks/peers.py --only genjax-pldi --pldi-artifact DIR

They go to ``benchmarks/.peers/NAME`` (``--root DIR`` or the ``PROBINF_PEERS`` environment
variable to put them elsewhere). Each finished virtualenv holds a marker file with its pins
and its ``pip freeze``; a virtualenv whose marker has the current pins is left alone
(``--force`` rebuilds it), one with other pins or no marker (an interrupted build) is
rebuilt. Pins are the versions the results in ``benchmarks/results/*.json`` recorded, or,
where nothing was recorded, the newest release on the package index when this file was
written (see ``pins_from`` of each peer, or ``--list``). Only the peer and the packages it
is timed with (jax, jaxlib, optax, equinox, torch) are pinned; pip resolves the rest, and
the marker records what it chose.

Benchmarks find a peer's interpreter with :func:`peer_python` (the peer's environment
variable, e.g. ``GENJAX_PYTHON``, first) and explain a missing one with
:func:`missing_peer_message`. Standard library only: bench_vi.py's genjax worker imports
this module inside the genjax virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "benchmarks" / ".peers"
ROOT_ENV = "PROBINF_PEERS"
MARKER = "probinf-peer.json"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CREATE = "python benchmarks/peers.py"


@dataclass(frozen=True)
class Peer:
    name: str
    python: str  # "major.minor" of the interpreter the virtualenv is made from
    requirements: tuple[str, ...]  # exact pins, pip syntax
    env_var: str  # a python given here wins over the virtualenv
    import_name: str  # imported once after installation, as a check
    used_by: str
    pins_from: str
    torch_cpu: bool = False  # torch's CPU-only build
    needs_pldi_artifact: bool = False  # vendored packages from the PLDI 2024 artifact


# probcomp/programmable-vi-pldi-2024 at commit ff2bc65: the packages of its poetry.lock that
# its vendored genjax and adevjax and the table-4 scripts need (their dependency closure).
_PLDI_LOCK = (
    "absl-py==2.1.0", "beartype==0.16.4", "chex==0.1.86", "cloudpickle==3.0.0",
    "contourpy==1.2.0", "cycler==0.12.1", "decorator==5.1.1", "dill==0.3.8", "dm-tree==0.1.8",
    "equinox==0.11.3", "etils==1.7.0", "flax==0.8.2", "fonttools==4.50.0", "gast==0.5.4",
    "jax==0.4.20", "jaxlib==0.4.20", "jaxtyping==0.2.28", "kiwisolver==1.4.5",
    "markdown-it-py==3.0.0", "matplotlib==3.6.2", "mdurl==0.1.2", "ml-dtypes==0.4.0",
    "msgpack==1.0.8", "nest-asyncio==1.6.0", "numpy==1.26.4", "opt-einsum==3.3.0",
    "optax==0.1.9", "orbax-checkpoint==0.5.7", "packaging==24.0", "pandas==2.2.1",
    "pillow==10.3.0", "plum-dispatch==2.3.3", "protobuf==5.26.1", "pygments==2.17.2",
    "pyparsing==3.1.2", "python-dateutil==2.9.0.post0", "pytz==2024.1", "pyyaml==6.0.1",
    "rich==13.7.1", "scipy==1.12.0", "seaborn==0.12.1", "six==1.16.0",
    "tensorflow-probability==0.21.0", "tensorstore==0.1.56", "toolz==0.12.1",
    "typeguard==2.13.3", "typing-extensions==4.5.0", "tzdata==2024.1",
)
PLDI_ARTIFACT_ENV = "PROBINF_PLDI_ARTIFACT"
PLDI_ARTIFACT_HOW = (
    "a checkout of https://github.com/probcomp/programmable-vi-pldi-2024 at commit ff2bc65 "
    "(git clone, then git checkout ff2bc65); its vendored genjax and adevjax are not on the "
    "package index"
)

PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("genjax", "3.11", ("genjax==0.10.3", "jax==0.5.3", "jaxlib==0.5.3", "optax==0.2.8"),
         "GENJAX_PYTHON", "genjax", "bench_vi.py (genjax 0.10.x, the released genjax.vi)",
         "benchmarks/results/vi.json, results.*.genjax_environments.genjax: genjax 0.10.3, "
         "jax/jaxlib 0.5.3, optax 0.2.8, Python 3.11.7"),
    Peer("genjax1", "3.12", ("genjax==1.0.14", "jax==0.11.2", "jaxlib==0.11.2", "optax==0.2.8"),
         "GENJAX1_PYTHON", "genjax", "bench_vi.py (genjax 1.x)",
         "benchmarks/results/vi.json, results.*.genjax_environments.genjax1: genjax 1.0.14, "
         "jax/jaxlib 0.11.2, optax 0.2.8, Python 3.12.1"),
    Peer("genjax-pldi", "3.10", _PLDI_LOCK, "GENJAX_PLDI_PYTHON", "genjax",
         "vi_cone.py --authors-code DIR (the authors' table-4 scripts)",
         "the poetry.lock of probcomp/programmable-vi-pldi-2024 at commit ff2bc65 (Python 3.10, "
         "jax/jaxlib 0.4.20: what benchmarks/results/vi_cone.json, "
         "authors_code_run_here.environment, records), plus the artifact's vendored genjax "
         "and adevjax installed from --pldi-artifact",
         needs_pldi_artifact=True),
    Peer("pcx", "3.11", ("pcx==0.6.3", "jax==0.4.38", "jaxlib==0.4.38", "equinox==0.11.12",
                         "optax==0.2.5"),
         "PCX_PYTHON", "pcx", "bench_pcn.py",
         "benchmarks/results/pcn.json, results.*.pcx_pc.versions: pcx 0.6.3, jax 0.4.38; "
         "Python 3.11 from bench_pcn.py; equinox and optax were not recorded: the newest "
         "releases pip resolves within pcx's ranges (equinox <0.12, optax <0.3) with jax "
         "0.4.38, on 2026-12-06"),
    Peer("cirkit", "3.11", ("libcirkit==0.3.1", "torch==2.13.0+cpu"),
         "CIRKIT_PYTHON", "cirkit", "bench_circuits.py (throughput)",
         "benchmarks/results/circuits.json, throughput.cirkit.*: libcirkit 0.3.1, torch "
         "2.13.0+cpu; Python not recorded: 3.11, as this project's",
         torch_cpu=True),
    Peer("sbi", "3.11", ("sbi==0.27.0", "torch==2.13.0+cpu"),
         "SBI_PYTHON", "sbi", "bench_amortized.py (sbi's NPE)",
         "benchmarks/results/amortized.json, tasks.*.sbi: sbi 0.27.0, torch 2.13.0+cpu; "
         "Python not recorded: 3.11, as this project's",
         torch_cpu=True),
    Peer("its_hub", "3.11", ("its_hub[lm]==1.2.0",),
         "ITS_HUB_PYTHON", "its_hub", "bench_llm.py (--its-hub-python)",
         "docs/llm.md (its_hub 1.2.0 in the recorded comparison; benchmarks/results/llm.json "
         "holds no its_hub section now), also the newest release on 2026-12-06; the [lm] "
         "extra brings the OpenAI-compatible client; Python >= 3.11 is its requirement"),
    Peer("flowjax", "3.11", ("flowjax==19.1.2", "jax==0.10.2", "jaxlib==0.10.2",
                             "equinox==0.13.8", "optax==0.2.8"),
         "FLOWJAX_PYTHON", "flowjax",
         "none as a virtualenv: bench_flows.py imports flowjax in-process; it is in the "
         "project's `bench` extra (pip install -e '.[bench]'); this virtualenv runs flowjax "
         "on its own",
         "benchmarks/results/flows.json, versions: flowjax 19.1.2, jax/jaxlib 0.10.2, "
         "equinox 0.13.8, optax 0.2.8, Python 3.11.7"),
)}


# ----------------------------------------------------------------------- finding a peer


def peers_root(root: str | os.PathLike | None = None) -> Path:
    """Where the virtualenvs are: ``root``, else ``$PROBINF_PEERS``, else ``benchmarks/.peers``."""
    chosen = root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def _peer(name: str) -> Peer:
    if name not in PEERS:
        raise ValueError(f"name: expected one of {sorted(PEERS)}, got {name!r}")
    return PEERS[name]


def _venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _read_marker(venv: Path) -> dict | None:
    try:
        return json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _recipe(peer: Peer, artifact: Path | None = None) -> dict:
    """What a virtualenv must have been built from to count as this peer's (the marker's key)."""
    recipe = {"python": peer.python, "requirements": list(peer.requirements)}
    if peer.needs_pldi_artifact:
        recipe["pldi_artifact"] = str(artifact) if artifact is not None else None
    return recipe


def _matches(marker: dict | None, peer: Peer, artifact: Path | None = None) -> bool:
    if not marker:
        return False
    recipe = marker.get("recipe", {})
    if peer.needs_pldi_artifact and artifact is None:  # any artifact checkout will do
        recipe = {k: v for k, v in recipe.items() if k != "pldi_artifact"}
        return recipe == {k: v for k, v in _recipe(peer).items() if k != "pldi_artifact"}
    return recipe == _recipe(peer, artifact)


def peer_python(name: str, root: str | os.PathLike | None = None) -> Path | None:
    """The python of peer ``name``, or ``None`` when there is none to use.

    The peer's environment variable (``PEERS[name].env_var``, e.g. ``GENJAX_PYTHON``) wins
    when set (``None`` if it names no file); otherwise the virtualenv ``<root>/<name>`` that
    this script built with the current pins (an outdated or unfinished one gives ``None``).
    """
    peer = _peer(name)
    override = os.environ.get(peer.env_var)
    if override:
        path = Path(override).expanduser()
        return path if path.is_file() else None
    venv = peers_root(root) / name
    python = _venv_python(venv)
    if python.is_file() and _matches(_read_marker(venv), peer):
        return python
    return None


def create_command(name: str, root: str | os.PathLike | None = None) -> str:
    """The command that creates peer ``name``'s virtualenv (run from the repository root)."""
    peer = _peer(name)
    command = f"{CREATE} --only {name}"
    if root is not None:
        command += f" --root {peers_root(root)}"
    if peer.needs_pldi_artifact:
        command += " --pldi-artifact DIR"
    return command


def missing_peer_message(name: str, root: str | os.PathLike | None = None) -> str:
    """Why :func:`peer_python` found no python for ``name``, and the command that makes one."""
    peer = _peer(name)
    command = create_command(name, root)
    pins = " ".join(peer.requirements) if len(peer.requirements) <= 6 else "the pins in peers.py"
    override = os.environ.get(peer.env_var)
    if override:
        return (f"{peer.env_var}={override} is not a file: point it at a python that has "
                f"{pins}, or unset it and run `{command}`")
    venv = peers_root(root) / name
    if _venv_python(venv).is_file():
        marker = _read_marker(venv)
        why = ("was not finished" if marker is None
               else "has other pins than benchmarks/peers.py")
        message = f"the {name} virtualenv at {venv} {why}: rebuild it with `{command}`"
    else:
        message = f"no {name} virtualenv at {venv}: create it with `{command}`"
    if peer.needs_pldi_artifact:
        message += f", DIR being {PLDI_ARTIFACT_HOW}"
    return message + f" (or set {peer.env_var} to a python that has {pins})"


# ------------------------------------------------------------------ building a peer


def _interpreter_candidates(version: str) -> list[Path]:
    """Pythons that may be ``version``: on PATH, this one, pyenv's, uv's and the system's."""
    found = [shutil.which(f"python{version}")]
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        found.append(sys.executable)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    # Newest patch release first (3.11.10 before 3.11.7).
    patch = lambda p: [int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", p.parent.parent.name)]
    found += sorted(pyenv.glob(f"{version}.*/bin/python{version}"), key=patch, reverse=True)
    uv = Path.home() / ".local" / "share" / "uv" / "python"
    found += sorted(uv.glob(f"cpython-{version}.*/bin/python{version}"), reverse=True)
    found += [Path(d) / f"python{version}" for d in ("/usr/local/bin", "/usr/bin")]
    unique: list[Path] = []
    for path in found:
        if path and Path(path) not in unique:
            unique.append(Path(path))
    return unique


def _probe(python: Path) -> tuple[str, Path] | None:
    """(``major.minor``, executable) of ``python`` if it runs and can make a virtualenv."""
    try:
        done = subprocess.run(
            [str(python), "-c", "import sys, venv, ensurepip; "
             "print('%d.%d' % sys.version_info[:2]); print(sys.executable)"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split("\n")
    if done.returncode != 0 or len(lines) < 2:
        return None
    return lines[0].strip(), Path(lines[1].strip() or python)


def find_interpreter(version: str, given: dict[str, Path] | None = None) -> Path | None:
    """A working Python ``version`` ("3.11") with venv and ensurepip, or ``None``.

    A pyenv shim on PATH for a version pyenv does not activate fails to run and is
    passed over, so pyenv's own installations are tried after it. Returns the
    interpreter's own executable (not the shim).
    """
    candidates = [given[version]] if given and version in given else _interpreter_candidates(version)
    for candidate in candidates:
        found = _probe(candidate) if candidate.is_file() else None
        if found and found[0] == version:
            return found[1]
    return None


def _reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # any failure means: do not give it to pip
        return False


def _pip(python: Path, args: list[str]) -> tuple[int, str]:
    """Run ``python -m pip ARGS``, echoing its output; (return code, output)."""
    command = [str(python), "-m", "pip", *args]
    print("  $ " + " ".join(command), flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        print("    " + line, end="", flush=True)
        lines.append(line)
    return process.wait(), "".join(lines)


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ]", requirement, maxsplit=1)[0]


def _check(python: Path, peer: Peer, requirements: list[str]) -> str | None:
    """Installed versions equal the pins and the peer imports; an error message otherwise."""
    pins = {_requirement_name(r): r.split("==", 1)[1] for r in requirements if "==" in r}
    code = ("import importlib, importlib.metadata as md, json, sys\n"
            "pins = json.loads(sys.argv[1])\n"
            "wrong = {n: md.version(n) for n, v in pins.items() if md.version(n) != v}\n"
            f"importlib.import_module({peer.import_name!r})\n"
            "print(json.dumps(wrong))\n")
    done = subprocess.run([str(python), "-c", code, json.dumps(pins)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if done.returncode != 0:
        return f"the check failed: {done.stderr.strip()[-1500:]}"
    wrong = json.loads(done.stdout.strip().splitlines()[-1])
    if wrong:
        return f"installed versions differ from the pins: {wrong}"
    return None


def build(peer: Peer, root: Path, *, interpreters: dict[str, Path], artifact: Path | None,
          force: bool) -> str:
    """Create (or keep) ``peer``'s virtualenv; returns "created" or "up to date".

    Raises RuntimeError with the reason when it cannot.
    """
    venv = root / peer.name
    if peer.needs_pldi_artifact:
        if artifact is None:
            raise RuntimeError(f"{peer.name} needs --pldi-artifact DIR (or {PLDI_ARTIFACT_ENV}): "
                               f"{PLDI_ARTIFACT_HOW}")
        missing = [p for p in ("adevjax/pyproject.toml", "genjax/pyproject.toml")
                   if not (artifact / p).is_file()]
        if missing:
            raise RuntimeError(f"--pldi-artifact: expected {PLDI_ARTIFACT_HOW}; "
                               f"{artifact} has no {', '.join(missing)}")
    python = _venv_python(venv)
    if not force and python.is_file() and _matches(_read_marker(venv), peer, artifact):
        return "up to date"
    interpreter = find_interpreter(peer.python, interpreters)
    if interpreter is None:
        raise RuntimeError(
            f"no working Python {peer.python} (with venv and ensurepip) found: looked for "
            f"python{peer.python} on PATH, pyenv's and uv's installations and /usr/bin; "
            f"install one or pass --python {peer.python}=PATH")
    if venv.exists():
        if not (venv / "pyvenv.cfg").is_file():
            raise RuntimeError(f"{venv} exists and is not a virtualenv: move it away first")
        print(f"  removing the existing virtualenv {venv} (outdated, unfinished or --force)", flush=True)
        shutil.rmtree(venv)
    root.mkdir(parents=True, exist_ok=True)
    print(f"  python {peer.python}: {interpreter}", flush=True)
    subprocess.run([str(interpreter), "-m", "venv", str(venv)], check=True)

    requirements = list(peer.requirements)
    notes = []
    index_args = []
    if peer.torch_cpu:
        if _reachable(TORCH_CPU_INDEX + "/"):
            index_args = ["--extra-index-url", TORCH_CPU_INDEX]
        else:
            notes.append(f"{TORCH_CPU_INDEX} unreachable: torch's CPU build from pip's "
                         "configured indexes and find-links")
    code, output = _pip(python, ["install", "--no-input", *index_args, *requirements])
    cpu_pin = next((r for r in requirements if r.startswith("torch==") and "+cpu" in r), None)
    if code != 0 and cpu_pin and "No matching distribution" in output:
        # The CPU build is not to be had here: PyPI's build of the same version (on Linux it
        # bundles CUDA libraries, a download of several GB; it runs on the CPU all the same).
        plain = cpu_pin.split("+", 1)[0]
        notes.append(f"{cpu_pin} not found: installed {plain} from the package index instead")
        print(f"  {notes[-1]}", flush=True)
        requirements = [plain if r == cpu_pin else r for r in requirements]
        code, output = _pip(python, ["install", "--no-input", *requirements])
    if code != 0:
        raise RuntimeError(f"pip install failed for {peer.name} (see its output above)")
    if peer.needs_pldi_artifact:
        code, _ = _pip(python, ["install", "--no-input", "--no-deps",
                                str(artifact / "adevjax"), str(artifact / "genjax")])
        if code != 0:
            raise RuntimeError("pip install of the artifact's adevjax and genjax failed")
    problem = _check(python, peer, requirements)
    if problem:
        raise RuntimeError(f"{peer.name}: {problem}")
    _, freeze = _pip_quiet(python, ["freeze", "--all"])
    marker = {
        "peer": peer.name,
        "recipe": _recipe(peer, artifact),
        "installed_requirements": requirements,
        "notes": notes,
        "interpreter": str(interpreter),
        "python": subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                                 capture_output=True, text=True).stdout.strip(),
        "pins_from": peer.pins_from,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "freeze": freeze.splitlines(),
    }
    partial = venv / (MARKER + ".tmp")
    partial.write_text(json.dumps(marker, indent=1) + "\n")
    partial.replace(venv / MARKER)  # the marker appears only once everything above worked
    return "created"


def _pip_quiet(python: Path, args: list[str]) -> tuple[int, str]:
    done = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True)
    return done.returncode, done.stdout


# ----------------------------------------------------------------------------- CLI


def _status(peer: Peer, root: Path) -> str:
    if os.environ.get(peer.env_var):
        python = peer_python(peer.name, root)
        return f"{peer.env_var} -> {python}" if python else f"MISSING ({peer.env_var} is no file)"
    python = peer_python(peer.name, root)
    if python:
        return f"ready: {python}"
    venv = root / peer.name
    return "outdated or unfinished: " + str(venv) if venv.exists() else "not created"


def list_peers(root: Path, interpreters: dict[str, Path]) -> None:
    print(f"peers root: {root} (--root DIR or ${ROOT_ENV} to change it)")
    command_root = None if root == peers_root() else root
    found: dict[str, Path | None] = {}
    for peer in PEERS.values():
        if peer.python not in found:
            found[peer.python] = find_interpreter(peer.python, interpreters)
        interpreter = found[peer.python]
        print(f"\n{peer.name}")
        print(f"  status:      {_status(peer, root)}")
        print(f"  python:      {peer.python} "
              + (f"({interpreter})" if interpreter else "(NO INTERPRETER FOUND: --python "
                 f"{peer.python}=PATH)"))
        print(f"  pins:        {' '.join(peer.requirements)}")
        print(f"  pins from:   {peer.pins_from}")
        print(f"  used by:     {peer.used_by}")
        print(f"  override:    {peer.env_var}")
        print(f"  create with: {create_command(peer.name, command_root)}")


def _interpreter_arg(text: str) -> tuple[str, Path]:
    version, sep, path = text.partition("=")
    if not sep or not re.fullmatch(r"\d+\.\d+", version) or not path:
        raise argparse.ArgumentTypeError(f"--python: expected X.Y=PATH, got {text!r}")
    return version, Path(path).expanduser()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(PEERS),
                        help="build only these peers (default: all)")
    parser.add_argument("--root", default=None,
                        help=f"where the virtualenvs go (default: ${ROOT_ENV} or {DEFAULT_ROOT})")
    parser.add_argument("--list", action="store_true", help="show the peers and stop")
    parser.add_argument("--force", action="store_true", help="rebuild even an up-to-date one")
    parser.add_argument("--python", type=_interpreter_arg, action="append", default=[],
                        metavar="X.Y=PATH", help="the interpreter to use for Python X.Y")
    parser.add_argument("--pldi-artifact", type=Path,
                        default=os.environ.get(PLDI_ARTIFACT_ENV) or None,
                        help=f"for genjax-pldi: {PLDI_ARTIFACT_HOW} (or ${PLDI_ARTIFACT_ENV})")
    args = parser.parse_args(argv)
    root = peers_root(args.root)
    interpreters = dict(args.python)
    if args.list:
        list_peers(root, interpreters)
        return 0
    artifact = Path(args.pldi_artifact).expanduser().resolve() if args.pldi_artifact else None
    names = args.only or list(PEERS)
    outcome: dict[str, str] = {}
    for name in names:
        peer = PEERS[name]
        print(f"== {name} (Python {peer.python}): {' '.join(peer.requirements)}", flush=True)
        if peer.needs_pldi_artifact and artifact is None and not args.only:
            outcome[name] = f"skipped: needs --pldi-artifact DIR, {PLDI_ARTIFACT_HOW}"
            continue
        try:
            outcome[name] = build(peer, root, interpreters=interpreters, artifact=artifact,
                                  force=args.force)
        except (RuntimeError, subprocess.CalledProcessError, OSError) as err:
            outcome[name] = f"FAILED: {err}"
        print(f"   {name}: {outcome[name]}", flush=True)
    print("\nsummary")
    for name, result in outcome.items():
        print(f"  {name:12s} {result}")
    return 1 if any(r.startswith("FAILED") for r in outcome.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
