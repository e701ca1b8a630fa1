"""The one ``Registry``: decorator, lazy built-ins, entry points (neutral and deprecated groups), errors.

The last test installs a real third-party package into this environment (``pip install --no-deps
--no-build-isolation``, offline) that adds a recognizer, a backend and a protection method through
entry points, uses them through the public API and the CLIs, and uninstalls it again.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from advface_sdk import Protector
from advface_sdk.backends import BACKENDS, list_backends
from advface_sdk.cli import main as advface_cli
from advface_sdk.evaluation.methods import METHODS, create_method, list_methods
from advface_sdk.gallery import STORES
from facecore.errors import BackendUnavailableError, InvalidInputError
from facecore.recognizers import RECOGNIZERS, create_recognizer, list_recognizers
from facecore.registry import Registry
from vigface_sdk.cli import main as vigface_cli


class Shape:
    name = "square"

    def __init__(self, side: float = 1.0):
        self.side = side


def test_decorator_lazy_builtin_and_errors():
    reg = Registry("shape", "facepriv.test_shapes")
    assert reg.register(Shape) is Shape  # plain decorator: the name comes from .name
    reg.register(name="circle")(lambda radius=1.0: ("circle", radius))
    reg.register("collections:OrderedDict", name="lazy")  # imported on first use
    assert reg.names() == ["circle", "lazy", "square"] and "square" in reg and "nope" not in reg
    assert reg.create("square", side=2).side == 2 and reg.create("circle", 3) == ("circle", 3)
    assert reg.get("lazy").__name__ == "OrderedDict"
    with pytest.raises(InvalidInputError, match=r"unknown shape 'nope'; available: circle, lazy, square"):
        reg.get("nope")
    with pytest.raises(InvalidInputError, match="bad parameters for shape 'square'"):
        reg.create("square", colour="red")
    with pytest.raises(InvalidInputError, match="already registered"):
        reg.register(lambda: None, name="square")
    reg.register(dict, name="square", override=True)
    assert reg.get("square") is dict
    reg.unregister("square")
    assert "square" not in reg
    reg.register("no_such_module_xyz:Thing", name="broken")
    with pytest.raises(InvalidInputError, match="'broken' cannot be imported here"):
        reg.get("broken")


def test_base_class_is_enforced_and_error_type_is_the_registrys():
    reg = Registry("store", "facepriv.test_stores", error=BackendUnavailableError, base=Shape)
    with pytest.raises(InvalidInputError, match="not a Shape subclass"):
        reg.register(dict, name="dict")
    with pytest.raises(BackendUnavailableError, match="unknown store"):
        reg.get("x")
    with pytest.raises(BackendUnavailableError, match="must be a name"):
        reg.get(3)


def test_the_project_registries_share_one_shape():
    assert {"fr128", "fr512", "onnx", "insightface", "insightface-pack"} <= set(list_recognizers())
    assert {"torch", "onnxruntime", "tensorrt"} <= set(list_backends())
    assert {"faiss", "milvus"} <= set(STORES.names())
    for reg, group in ((RECOGNIZERS, "facepriv.recognizers"), (BACKENDS, "facepriv.backends"),
                       (STORES, "facepriv.gallery_stores")):
        assert isinstance(reg, Registry) and reg.group == group
    with pytest.raises(BackendUnavailableError, match="available: onnxruntime, .*torch"):
        Protector("fr128", backend="nope")
    with pytest.raises(InvalidInputError, match="unknown recognizer 'nope'; available: .*fr128"):
        create_recognizer("nope")


# --------------------------------------------------------------------- a real third-party package, installed

PLUGIN = '''
"""A third-party plug-in: a recognizer, a backend and a protection method, found through entry points."""

import hashlib

import numpy as np

from advface_sdk.evaluation.methods import ProtectionMethod
from facecore.images import as_image_batch
from facecore.recognizers import Preprocessing, Recognizer


class MeanColourRecognizer(Recognizer):
    """Embeds a crop as its mean colour per 4x4 cell of the top-left 8x8 corner (3 * 4 = 12 numbers)."""

    name = "mean-colour"

    def __init__(self, size=112):
        self._pre = Preprocessing("BGR", 0.0, 255.0, (size, size))

    @property
    def dim(self):
        return 12

    @property
    def fingerprint(self):
        return hashlib.sha256(b"mean-colour").hexdigest()[:16]

    @property
    def preprocessing(self):
        return self._pre

    def embed(self, aligned_images):
        x = as_image_batch(aligned_images, self._pre.input_size)[:, :8, :8].astype(np.float32) / 255 + 0.1
        return x.reshape(len(x), 2, 4, 2, 4, 3).mean(axis=(2, 4)).reshape(len(x), 12)


class NumpyBackend:
    """The protection in float64 numpy (the artifact's reference), returned as float32."""

    def __init__(self, artifact, device="cpu"):
        self.artifact = artifact

    def run(self, x):
        return self.artifact.reference(x).astype(np.float32)


class SignFlip(ProtectionMethod):
    """Stores -z (a toy): matched by cosine against the negated probe."""

    name = "sign-flip"

    def output_dim(self, dim):
        return dim

    def bytes_per_template(self, dim):
        return 4 * dim

    def _protect(self, z, user_ids):
        return (-z).astype(np.float32)
'''

SETUP_CFG = """
[metadata]
name = facepriv-demo-plugin
version = 0.0.1

[options]
py_modules = facepriv_demo_plugin

[options.entry_points]
facepriv.recognizers =
    mean-colour = facepriv_demo_plugin:MeanColourRecognizer
facepriv.backends =
    numpy-reference = facepriv_demo_plugin:NumpyBackend
facepriv.protection_methods =
    sign-flip = facepriv_demo_plugin:SignFlip
advface_sdk.backends =
    numpy-legacy = facepriv_demo_plugin:NumpyBackend
"""


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo_plugin(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "facepriv_demo_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (src / "setup.cfg").write_text(SETUP_CFG)
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    done = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(src))
    assert done.returncode == 0, done.stdout + done.stderr
    importlib.invalidate_caches()
    try:
        yield
    finally:
        undone = _pip("uninstall", "--yes", "--quiet", "facepriv-demo-plugin")
        importlib.invalidate_caches()
        for reg, name in ((RECOGNIZERS, "mean-colour"), (BACKENDS, "numpy-reference"), (BACKENDS, "numpy-legacy"),
                          (METHODS, "sign-flip")):
            reg.unregister(name)  # classes loaded from the removed package
        assert undone.returncode == 0, undone.stdout + undone.stderr


@pytest.mark.filterwarnings("ignore:entry point 'numpy-legacy':DeprecationWarning")
def test_third_party_package_plugs_in_through_entry_points(demo_plugin, tmp_path):
    assert "mean-colour" in list_recognizers() and "sign-flip" in list_methods()
    with pytest.warns(DeprecationWarning, match="deprecated group 'advface_sdk.backends'"):
        names = list_backends()
    assert {"numpy-reference", "numpy-legacy"} <= set(names)

    rec = create_recognizer("mean-colour")
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    emb = rec.embed(crops)
    assert emb.shape == (3, 12) and emb.dtype == np.float32

    z = np.random.default_rng(1).standard_normal((5, 128)).astype(np.float32)
    reference = Protector("fr128", backend="numpy-reference")  # checked against the weights on the probe set
    np.testing.assert_allclose(reference.protect(z), Protector("fr128", backend="onnxruntime").protect(z), atol=1e-5)
    with pytest.warns(DeprecationWarning):
        assert Protector("fr128", backend="numpy-legacy").backend().artifact.dim == 128

    method = create_method("sign-flip", seed=0).fit(z)
    stored = method.protect_gallery(z, np.arange(5))
    assert np.array_equal(stored, -z)

    runner = CliRunner()
    for cli in (advface_cli, vigface_cli):
        out = runner.invoke(cli, ["plugins"])
        assert out.exit_code == 0, out.output
        assert "mean-colour (facepriv-demo-plugin)" in out.output
    out = runner.invoke(advface_cli, ["plugins"]).output
    assert "numpy-reference (facepriv-demo-plugin)" in out and "sign-flip (facepriv-demo-plugin)" in out
    np.save(tmp_path / "z.npy", z)
    out = runner.invoke(advface_cli, ["protect", str(tmp_path / "z.npy"), str(tmp_path / "p.npy"), "--backend", "numpy-reference"])
    assert out.exit_code == 0, out.output
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), reference.protect(z), atol=1e-6)
