"""The train-on-synthetic recipe: augmentation and the recognizer trainer (tiny sizes, CPU)."""

import numpy as np
import pytest
import torch

from facecore.errors import InvalidInputError
from vigface_sdk.training.recognizer import RecognizerTrainConfig, augment_faces, embed_images, train_recognizer


def two_people(n_per: int = 24, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes that differ in layout (a bright top vs bottom half: mirroring keeps it) under pixel noise."""
    rng = np.random.default_rng(seed)
    base = np.zeros((2, size, size, 3), np.float32)
    base[0, : size // 2] = 200
    base[1, size // 2:] = 200
    x = base.repeat(n_per, 0) + rng.normal(0, 20, (2 * n_per, size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8), np.repeat(np.array(["a", "b"]), n_per)


def test_augment_faces_is_seeded_in_range_and_changes_the_batch():
    x = torch.rand(6, 3, 32, 32)
    a = augment_faces(x, torch.Generator().manual_seed(1))
    b = augment_faces(x, torch.Generator().manual_seed(1))
    c = augment_faces(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and (a - x).abs().mean() > 0.01


CFG = RecognizerTrainConfig(steps=30, batch_size=16, lr=0.05, layers=(1, 1, 1, 1), width=8, dim=16)


def test_train_recognizer_learns_and_is_deterministic():
    images, labels = two_people()
    net, info = train_recognizer(images, labels, CFG, progress=False)
    net2, _ = train_recognizer(images, labels, CFG, progress=False)
    assert info["final_loss"] < info["first_loss"] and info["identities"] == 2 and info["epochs"] == 30 * 16 / 48
    assert all(torch.equal(p, q) for p, q in zip(net.state_dict().values(), net2.state_dict().values()))
    e = embed_images(net, images)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    same = labels[:, None] == labels[None]
    assert s[same].mean() > s[~same].mean() + 0.1  # the two people are told apart


@pytest.mark.parametrize("bad", ["float", "gray", "labels", "one_class", "too_few"])
def test_train_recognizer_rejects_bad_input(bad):
    images, labels = two_people()
    if bad == "float":
        images = images.astype(np.float32)
    elif bad == "gray":
        images = images[..., 0]
    elif bad == "labels":
        labels = labels[:-1]
    elif bad == "one_class":
        labels = np.zeros(len(labels))
    else:
        images, labels = images[:8], labels[:8]
    with pytest.raises(InvalidInputError):
        train_recognizer(images, labels, CFG, progress=False)
