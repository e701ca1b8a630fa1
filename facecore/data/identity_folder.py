"""Identity-folder face datasets: ``<root>/<identity>/<image>``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, FacePrivacyWarning
from ..images import read_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp"}


@dataclass
class IdentityFolderDataset:
    """Lists images grouped by identity; ``paths[i]`` has label ``labels[i]`` (index into ``identities``)."""

    root: Path
    paths: list[Path]
    labels: np.ndarray
    identities: list[str]
    size: tuple[int, int] = (112, 112)
    _index: dict = field(default_factory=dict, repr=False)
    _relpaths: list = field(default_factory=list, repr=False)

    @classmethod
    def from_folder(cls, root: str | Path, size: tuple[int, int] = (112, 112), min_images: int = 1) -> "IdentityFolderDataset":
        """Scan ``root``; identities with fewer than ``min_images`` images are left out."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"dataset folder not found: {root}")
        identities, paths, labels = [], [], []
        ignored = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
            ignored += [f for sub in folder.iterdir() if sub.is_dir() for f in sub.rglob("*")
                        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
            if len(files) < min_images:
                continue
            labels += [len(identities)] * len(files)
            identities.append(folder.name)
            paths += files
        if ignored:
            warnings.warn(f"{len(ignored)} images in {root} are not <identity>/<image> files and were left out "
                          f"(e.g. {ignored[0].relative_to(root).as_posix()}): move them into their identity's folder",
                          FacePrivacyWarning, stacklevel=2)
        if not paths:
            raise DataError(f"no images found in {root}: expected <identity>/<image> folders with {sorted(IMAGE_SUFFIXES)} files")
        return cls(root, paths, np.asarray(labels, np.int64), identities, tuple(size))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def relpaths(self) -> list[str]:
        if not self._relpaths:
            self._relpaths = [p.relative_to(self.root).as_posix() for p in self.paths]
        return self._relpaths

    def load(self, index: int) -> np.ndarray:
        """uint8 BGR crop of image ``index`` at ``size``."""
        return read_image(self.paths[index], self.size)

    def index_of(self, relpath: str) -> int:
        if not self._index:
            self._index = {r: i for i, r in enumerate(self.relpaths)}
        try:
            return self._index[relpath]
        except KeyError:
            raise DataError(f"{relpath} is not in dataset {self.root}") from None

    def subset(self, identities: set[str] | list[str]) -> "IdentityFolderDataset":
        """Only the images of the given identities (labels re-indexed)."""
        keep = sorted(set(identities) & set(self.identities))
        new = {name: i for i, name in enumerate(keep)}
        idx = [i for i, lab in enumerate(self.labels) if self.identities[lab] in new]
        return IdentityFolderDataset(
            self.root, [self.paths[i] for i in idx],
            np.asarray([new[self.identities[self.labels[i]]] for i in idx], np.int64), keep, self.size,
        )
