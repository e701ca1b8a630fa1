"""Reconstruction grids never publish the victims' own photos inside benchmarks/results unless asked."""

from pathlib import Path

import numpy as np
from PIL import Image

from advface_sdk.evaluation.grid import save_reconstruction_grid
from facecore.paths import PUBLISHED_RESULTS as _RESULTS, originals_allowed
from advface_sdk.evaluation.report import plot_grid


def test_originals_withheld_by_default_only_inside_results(tmp_path):
    assert originals_allowed(tmp_path) is True
    assert originals_allowed(_RESULTS / "threat_matrix") is False and originals_allowed(_RESULTS) is False
    assert originals_allowed(_RESULTS, True) is True and originals_allowed(tmp_path, False) is False
    assert originals_allowed(_RESULTS / ".." / "other") is True  # a sibling of results is not results


def _columns(n=2):
    rng = np.random.default_rng(0)
    return {"true face": np.full((n, 16, 16, 3), 255, np.uint8),
            "from raw template": rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)}


def test_grids_drop_the_true_column_when_withheld(tmp_path):
    for writer in (lambda p, c, o: save_reconstruction_grid(p, c, title="t", originals=o),
                   lambda p, c, o: plot_grid(c, p, "t", originals=o)):
        widths = {}
        for shown in (True, False):
            path = tmp_path / f"{shown}_{len(widths)}_{id(writer)}.png"
            writer(path, _columns(), shown)
            widths[shown] = Image.open(Path(path)).size[0]
        assert widths[False] < widths[True]  # one column fewer
