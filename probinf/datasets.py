"""Small datasets that ship inside the package (no download ever)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

__all__ = ["load_eight_schools"]


def load_eight_schools() -> dict[str, np.ndarray]:
    """Eight schools (Rubin, 1981): ``{"y": (8,), "sigma": (8,)}`` coaching effects and standard errors."""
    text = resources.files("probinf").joinpath("data/eight_schools.json").read_text()
    raw = json.loads(text)
    return {"y": np.asarray(raw["y"], np.float64), "sigma": np.asarray(raw["sigma"], np.float64)}
