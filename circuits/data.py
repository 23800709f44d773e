"""Loading the binary density-estimation benchmark (DEBD) datasets.

The twenty datasets of Lowd & Davis (2010), Van Haaren & Davis (2012) and
Bekker et al. (2015) are the standard benchmark of tractable density estimators.
Each is three files ``NAME.{train,valid,test}.data`` (optionally gzip-compressed,
``.data.gz``): comma-separated 0/1 values, one sample per line, no header.

Two small ones ship inside this package (``circuits/data/debd``, see its README):
``nltcs`` (16 variables) and ``mushrooms`` (112 variables); they load with no
``directory``. The full set is in the public repository
UCLA-StarAI/Density-Estimation-Datasets; pass its folder as ``directory``.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib

import numpy as np

__all__ = ["load_debd", "list_debd"]

_SPLITS = ("train", "valid", "test")
# Shipped with the package (package data); a path, since wheels install as plain files.
_SHIPPED_DIRECTORY = pathlib.Path(__file__).resolve().parent / "data" / "debd"
_FULL_SET = "the public repository UCLA-StarAI/Density-Estimation-Datasets"


def _split_path(directory: pathlib.Path, name: str, split: str) -> pathlib.Path | None:
    for suffix in (".data.gz", ".data"):
        path = directory / f"{name}.{split}{suffix}"
        if path.is_file():
            return path
    return None


def _directory(directory: str | os.PathLike | None) -> pathlib.Path:
    if directory is None:
        return _SHIPPED_DIRECTORY
    if not isinstance(directory, str | os.PathLike):
        raise TypeError(f"`directory` must be a path (str or os.PathLike) or None, "
                        f"got {type(directory).__name__}")
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise ValueError(f"`directory` {os.fspath(directory)!r} is not a directory")
    return directory


def list_debd(directory: str | os.PathLike | None = None) -> list[str]:
    """Names of the datasets in ``directory`` that have all three splits.

    With ``directory=None``, the datasets shipped with the package
    (``["mushrooms", "nltcs"]``).
    """
    directory = _directory(directory)
    names = {p.name.split(".")[0] for p in directory.iterdir() if ".train.data" in p.name}
    return sorted(n for n in names if all(_split_path(directory, n, s) for s in _SPLITS))


def _read(path: pathlib.Path) -> np.ndarray:
    compressed = path.suffix == ".gz"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            rows = [line.strip() for line in f if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as error:
        kind = "gzip-compressed text" if compressed else "text"
        raise ValueError(f"{path} could not be read as {kind} (the file may be corrupt or "
                         f"truncated): {type(error).__name__}: {error}") from error
    if not rows:
        raise ValueError(f"{path} holds no sample")
    if len({row.count(",") for row in rows}) != 1:
        raise ValueError(f"{path} has rows of different lengths")
    try:
        data = np.asarray([[int(v) for v in row.split(",")] for row in rows], dtype=np.int8)
    except ValueError as error:
        raise ValueError(f"{path} is not comma-separated integers: {error}") from None
    if data.min() < 0 or data.max() > 1:
        raise ValueError(f"{path} holds values other than 0 and 1")
    return data


def load_debd(name: str, directory: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Load one DEBD dataset.

    Args:
        name: dataset name, e.g. ``"nltcs"`` (see :func:`list_debd`).
        directory: the folder holding ``NAME.{train,valid,test}.data[.gz]``. ``None``
            (the default) reads the copies shipped with the package: ``nltcs`` (16
            variables; 16,181 / 2,157 / 3,236 train / valid / test rows) and
            ``mushrooms`` (112 variables; 2,000 / 500 / 5,624 rows). For the others,
            download them (the full set is in the public repository
            UCLA-StarAI/Density-Estimation-Datasets) and pass their folder.

    Returns:
        ``{"train": ..., "valid": ..., "test": ...}``, each an ``(N, V)`` int8 array of 0/1.

    Raises:
        TypeError: if ``name`` is not a str or ``directory`` not a path.
        ValueError: if ``name`` is not shipped (with ``directory=None``), if the directory
            or a split is missing (listing what is there), or a file is corrupt or
            malformed (naming the file).
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a dataset name (str) such as 'nltcs', "
                        f"got {type(name).__name__}")
    if not name:
        raise ValueError("`name` must be a dataset name such as 'nltcs', got ''")
    shipped = directory is None
    directory = _directory(directory)
    if shipped and name not in list_debd():
        raise ValueError(f"`name` {name!r} is not shipped with the package (shipped: "
                         f"{', '.join(list_debd())}); for the other DEBD datasets pass "
                         f"`directory=` a folder holding {name}.{{train,valid,test}}.data[.gz] "
                         f"(the full set is in {_FULL_SET})")
    out = {}
    for split in _SPLITS:
        path = _split_path(directory, name, split)
        if path is None:
            available = ", ".join(list_debd(directory)) or "none"
            raise ValueError(f"`name` {name!r}: no {name}.{split}.data[.gz] in {directory} "
                             f"(datasets there: {available})")
        out[split] = _read(path)
    widths = {split: a.shape[1] for split, a in out.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"`name` {name!r}: the splits have different numbers of variables {widths}")
    return out
