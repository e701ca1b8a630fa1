"""Picture grids: true face | reconstruction from raw | reconstruction from protected.

The victims' own photos (LFW) are third-party images of real people: grids written inside the repository's
``benchmarks/results`` leave them out unless asked (:func:`facecore.paths.originals_allowed`), so that nothing
committed shows them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facecore.paths import originals_allowed

ORIGINAL_COLUMNS = frozenset({"true", "true face"})


def publishable(columns: dict[str, np.ndarray], out_dir: str | Path, originals: bool | None = None) -> dict[str, np.ndarray]:
    """``columns``, less the victims' own photos (the keys in :data:`ORIGINAL_COLUMNS`) unless
    :func:`originals_allowed` says they may be written into ``out_dir``."""
    if originals_allowed(out_dir, originals):
        return columns
    return {k: v for k, v in columns.items() if k not in ORIGINAL_COLUMNS}


def save_reconstruction_grid(path: str | Path, columns: dict[str, np.ndarray], captions: list[str] | None = None,
                             title: str | None = None, originals: bool | None = None) -> Path:
    """One row per victim, one column per named uint8 RGB image stack (all ``(N, S, S, 3)``); the true-photo
    column is kept as :func:`originals_allowed` says for the folder of ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = publishable(columns, Path(path).parent, originals)
    names = list(columns)
    n = len(next(iter(columns.values())))
    fig, axes = plt.subplots(n, len(names), figsize=(1.7 * len(names), 1.7 * n), squeeze=False)
    for r in range(n):
        for c, name in enumerate(names):
            ax = axes[r, c]
            ax.imshow(columns[name][r])
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0 and captions:
                ax.set_ylabel(captions[r], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
