"""Results files written as the benchmark goes, and data files found or explained.

:func:`update_results` sets one entry of a JSON results file and rewrites the file
atomically (a temporary file in the same folder, then ``os.replace``), so a benchmark that
calls it after each completed unit (a problem, a dataset, a cell) keeps everything
measured so far when it crashes or is stopped, and never leaves a half-written file.

:func:`data_file` finds a reference-data file under the benchmark's ``--data`` folder and,
when it is absent, fails at once with the file's path and the option that names the folder
(instead of failing minutes into the run). Standard library only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_DATA", "DATA_ENV", "data_file", "debd_directory", "default_data_dir",
           "json_safe", "milliseconds", "posteriordb_directory", "update_results", "write_results"]

REPO = Path(__file__).resolve().parents[1]
# The development checkout keeps reference data beside the repository; users pass --data.
DEFAULT_DATA = REPO.parent / "shared" / "data"
DATA_ENV = "PROBINF_SHARED_DATA"


def milliseconds(seconds: float) -> str:
    """Seconds as milliseconds for the docs tables: three significant figures below 100 ms,
    whole milliseconds with thousands separators from there (no unit)."""
    value = 1e3 * seconds
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def default_data_dir() -> Path:
    """``$PROBINF_SHARED_DATA`` if set, else ``../shared/data`` beside the checkout."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA)


def data_file(data_dir: str | os.PathLike | None, *relative: str, needed_for: str) -> Path:
    """``data_dir / relative...``; a clear FileNotFoundError when it does not exist.

    Args:
        data_dir: the benchmark's ``--data`` value (None: :func:`default_data_dir`).
        relative: path parts below it, e.g. ``"posteriordb", "x.json.gz"``.
        needed_for: what the file is for, quoted in the error.
    """
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    path = base.joinpath(*relative)
    if not path.exists():
        source = ("--data" if data_dir is not None else f"${DATA_ENV}" if os.environ.get(DATA_ENV)
                  else f"the default {DEFAULT_DATA}")
        raise FileNotFoundError(
            f"{path} does not exist (needed for {needed_for}; data folder {base} from {source}). "
            f"Pass --data DIR with DIR holding {Path(*relative)} (the reference data of "
            f"../shared/data; see benchmarks/README.md)")
    return path


def add_debd_arguments(parser) -> None:
    """``--data`` and ``--shipped-debd``, the DEBD benchmarks' data options (see `debd_directory`)."""
    parser.add_argument("--data", default=None,
                        help="folder of the reference data, holding debd/ (default "
                             "$PROBINF_SHARED_DATA, else ../shared/data beside the checkout)")
    parser.add_argument("--shipped-debd", action="store_true",
                        help="the DEBD datasets shipped with the package (nltcs, mushrooms) "
                             "instead of a data folder")


def debd_directory(data_dir: str | os.PathLike | None, shipped: bool) -> Path | None:
    """Where a DEBD benchmark reads its datasets: None (``circuits.load_debd``'s copies
    shipped with the package, nltcs and mushrooms) when ``shipped``, else ``data_dir/debd``,
    checked to exist (the error names ``--data`` and ``--shipped-debd``)."""
    if shipped:
        return None
    return data_file(data_dir, "debd", needed_for="the DEBD datasets; or pass --shipped-debd "
                                                  "to use the two shipped with the package")


def add_posteriordb_argument(parser) -> None:
    """``--data``, the posteriordb benchmarks' data option (see `posteriordb_directory`)."""
    parser.add_argument("--data", default=None,
                        help="folder of the reference data, holding posteriordb/ (default "
                             "$PROBINF_POSTERIORDB, else $PROBINF_SHARED_DATA/posteriordb, else "
                             "../shared/data/posteriordb)")


def posteriordb_directory(data_dir: str | os.PathLike | None) -> Path:
    """The posteriordb folder: ``data_dir/posteriordb``; without ``data_dir``,
    ``$PROBINF_POSTERIORDB`` (benchmarks.posteriordb's override) if set, else the default
    data folder's ``posteriordb``; checked to exist (the error names ``--data``)."""
    override = os.environ.get("PROBINF_POSTERIORDB")
    if data_dir is None and override:
        if not Path(override).is_dir():
            raise FileNotFoundError(f"$PROBINF_POSTERIORDB {override} is not a folder; unset it "
                                    "or pass --data DIR with DIR holding posteriordb/")
        return Path(override)
    return data_file(data_dir, "posteriordb", needed_for="the posteriordb posteriors")


def json_safe(value: Any) -> Any:
    """``value`` with numpy/JAX scalars and arrays as Python numbers and lists, tuples as
    lists, and non-finite floats kept (json writes them as NaN / Infinity)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy / JAX arrays and scalars
        return json_safe(value.tolist())
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)


def write_results(path: str | os.PathLike, report: dict) -> None:
    """Write ``report`` as JSON to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(report), indent=2) + "\n"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def update_results(path: str | os.PathLike, key_path: str | Sequence[str], value: Any, *,
                   fresh: bool = False) -> dict:
    """Set ``report[k1][k2]...[kn] = value`` in the JSON file ``path`` and rewrite it atomically.

    Args:
        path: the results file; created (with its folder) when missing.
        key_path: one key, or the keys from the top down; intermediate dicts are created.
            An empty sequence replaces the whole report (``value`` must be a dict).
        value: anything :func:`json_safe` turns into JSON.
        fresh: start from an empty report instead of the file's contents (the first
            write of a run, so entries of an earlier run do not linger).

    Returns:
        The whole report as written.
    """
    keys = [key_path] if isinstance(key_path, str) else list(key_path)
    path = Path(path)
    report: dict = {}
    if not fresh and path.exists():
        text = path.read_text()
        report = json.loads(text) if text.strip() else {}
        if not isinstance(report, dict):
            raise ValueError(f"{path} holds a JSON {type(report).__name__}, not an object")
    if not keys:
        if not isinstance(value, dict):
            raise ValueError(f"value: expected a dict to replace the whole report, got {type(value).__name__}")
        report = dict(value)
    else:
        node = report
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
    write_results(path, report)
    return report

