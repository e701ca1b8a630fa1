"""Image loading and checking: every image in the project is uint8 HWC **BGR** (cv2's order)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .errors import DataError, DegenerateImageWarning, InvalidInputError

#: smallest side (pixels) that can hold a recognisable face; spread of values below which an image is blank
MIN_SIDE, MIN_SPREAD = 16, 8


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as uint8 BGR ``(H, W, 3)``; grey images become 3 channels.

    ``size`` is ``(width, height)``; the image is resized to it when it differs.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"cannot decode image (corrupt or not an image): {path}")
    flag_degenerate(image, str(path))
    if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)
    return image


def as_image_batch(images: np.ndarray | Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Validate aligned crops and stack them to uint8 ``(N, H, W, 3)``.

    ``size`` is the ``(width, height)`` every crop must have.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    if isinstance(images, np.ndarray):
        batch = images
    else:
        images = images if hasattr(images, "__len__") else list(images)  # a generator of crops
        if len(images) == 0:
            raise InvalidInputError("empty list of images: pass at least one aligned face crop")
        shapes = {np.asarray(im).shape for im in images}
        if len(shapes) != 1:
            raise InvalidInputError(f"images have different shapes {sorted(shapes)}; align them to {size[0]}x{size[1]} first")
        batch = np.stack([np.asarray(im) for im in images])
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise InvalidInputError(f"expected aligned crops of shape (N, H, W, 3), got {batch.shape}")
    if batch.shape[0] == 0:
        raise InvalidInputError("empty batch of images: pass at least one aligned face crop")
    if (batch.shape[2], batch.shape[1]) != tuple(size):
        raise InvalidInputError(
            f"aligned crops must be {size[0]}x{size[1]} (width x height), got {batch.shape[2]}x{batch.shape[1]}; "
            "align faces with the 5-point template first (see facepriv_plugins.insightface_adapter)"
        )
    if batch.dtype != np.uint8:
        if not np.issubdtype(batch.dtype, np.floating) and not np.issubdtype(batch.dtype, np.integer):
            raise InvalidInputError(f"images must be uint8 (0..255), got dtype {batch.dtype}")
        if not np.isfinite(batch).all():
            raise InvalidInputError("images contain NaN or Inf")
        if batch.min() < 0 or batch.max() > 255:
            raise InvalidInputError("image values must lie in 0..255 (uint8 BGR as cv2 reads them)")
        if np.issubdtype(batch.dtype, np.floating) and not all(np.array_equal(im, np.round(im)) for im in batch):
            raise InvalidInputError("float images must hold whole values 0..255 (uint8 BGR as cv2 reads them), got "
                                    "fractions: for images in 0..1 pass (img * 255).round().astype(np.uint8)")
        batch = batch.astype(np.uint8)
    return batch


def degenerate_reason(image: np.ndarray) -> str | None:
    """Why ``image`` cannot show a face (too small, blank/constant), or ``None``."""
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        return f"{w}x{h} pixels is too small to hold a face"
    step = max(1, max(h, w) // 512)  # a strided look is enough to find a blank image, even at 6000x6000
    sample = image[::step, ::step]
    if int(sample.max()) - int(sample.min()) < MIN_SPREAD:
        return f"the image is blank (all values {int(sample.min())}..{int(sample.max())})"
    return None


def flag_degenerate(image: np.ndarray, label: str) -> bool:
    """Warn (:class:`DegenerateImageWarning`, one per image) when ``image`` cannot show a face; the run goes on."""
    reason = degenerate_reason(image)
    if reason:
        warnings.warn(f"{label}: {reason}; its embedding is meaningless (no face detectable)", DegenerateImageWarning,
                      stacklevel=3)
    return reason is not None
