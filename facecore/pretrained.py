"""One way to save and load: ``save_pretrained`` / ``from_pretrained`` (diffusers' ConfigMixin/ModelMixin shape).

An artifact folder holds a JSON config, at most one safetensors weights file, optional extra files
and ``checksums.sha256`` (see :mod:`facecore.artifacts`). It is always written atomically (built
aside, renamed into place), verified on load before anything is parsed, never unpickled, and every
failure is an :class:`~facecore.errors.ArtifactError` (or a subclass).

- :class:`Pretrained`: the mixin. A class declares ``config_name``/``weights_name`` (and a format
  tag), implements :meth:`Pretrained.to_contents` and :meth:`Pretrained.from_contents`, and gets
  ``save_pretrained``/``from_pretrained``.
- :class:`PretrainedModule`: a torch module rebuilt by ``cls(**config)`` (the whole mapping done).
- :func:`write_pretrained` / :func:`read_pretrained`: the two functions underneath, for loaders
  with extra checks between verification and parsing (signatures) and for functions that save.
- :func:`save_components` / :func:`read_index`: a folder of component folders named by an index
  (a diffusers-style pipeline), swapped in as a whole.

diffusers' own ``ModelMixin.save_pretrained`` writes no checksums and its loader may reach for the
Hub, so the components of this project use this base instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch

from .artifacts import member, read_json, replace_dir, verify_artifact, write_artifact
from .errors import ArtifactError, FacePrivacyError
from .tempfiles import remove_stale

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
TensorLibrary = Literal["numpy", "torch"]


@dataclass
class Contents:
    """What an artifact folder holds: the config, the tensors of the weights file and extra files' bytes."""

    config: dict
    tensors: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def _dump_tensors(tensors: dict, library: TensorLibrary) -> bytes:
    if library == "torch":
        from safetensors.torch import save

        return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def load_tensors(data: bytes, library: TensorLibrary = "numpy", where: str | Path = "weights") -> dict:
    """Parse safetensors bytes into numpy arrays or torch tensors; :class:`ArtifactError` if they are not safetensors."""
    try:
        if library == "torch":
            from safetensors.torch import load
        else:
            from safetensors.numpy import load
        return load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError and plain ValueErrors
        raise ArtifactError(f"{where} is not valid safetensors: {exc}") from exc


def write_pretrained(directory: str | Path, contents: Contents, config_name: str = CONFIG_NAME,
                     weights_name: str | None = None, library: TensorLibrary = "numpy") -> Path:
    """Write ``contents`` into ``directory`` atomically with checksums (tensors need ``weights_name``)."""
    if contents.tensors and not weights_name:
        raise ArtifactError("tensors to save need a weights file name")
    files: dict[str, bytes | dict] = {weights_name: _dump_tensors(contents.tensors, library)} if weights_name else {}
    files[config_name] = contents.config
    files.update(contents.files)
    return write_artifact(directory, files)


def read_pretrained(directory: str | Path, config_name: str = CONFIG_NAME, weights_name: str | None = None,
                    library: TensorLibrary = "numpy", files: tuple[str, ...] = (),
                    check: Callable[[Path], None] | None = None, tag: dict | None = None) -> Contents:
    """Verify every checksum; with a ``tag``, refuse a config lacking any of its items (before looking for the
    weights: "holds another class" says more than "weights missing"); require the weights and ``files``; run
    ``check(directory)`` (e.g. a signature) before anything else is parsed; then parse config and weights."""
    directory = Path(directory)
    sums = verify_artifact(directory, (config_name,))
    config = read_json(directory, config_name) if tag else None
    for key, value in (tag or {}).items():
        if config.get(key) != value:
            raise ArtifactError(f"{directory} holds a {config.get(key)}, not a {value}")
    for name in (*((weights_name,) if weights_name else ()), *files):
        if name not in sums:
            raise ArtifactError(f"{directory}: {name} is missing from the artifact")
    if check is not None:
        check(directory)
    if config is None:
        config = read_json(directory, config_name)
    tensors = load_tensors(member(directory, weights_name).read_bytes(), library, directory / weights_name) if weights_name else {}
    return Contents(config, tensors, {name: member(directory, name).read_bytes() for name in files})


class Pretrained:
    """Mixin giving ``save_pretrained``/``from_pretrained`` from two hooks.

    ``to_contents(**options)`` returns the :class:`Contents` to write; the classmethod
    ``from_contents(contents, directory, **options)`` rebuilds the object. The config is tagged
    ``{format_key: format_name}`` (default ``{"_class_name": <class name>}``; ``format_key = None``
    for formats without a tag), and loading refuses a folder holding another tag. Errors raised
    while rebuilding become :class:`ArtifactError` naming the folder.
    """

    config_name: ClassVar[str] = CONFIG_NAME
    weights_name: ClassVar[str | None] = None
    tensor_library: ClassVar[TensorLibrary] = "numpy"
    extra_files: ClassVar[tuple[str, ...]] = ()
    format_key: ClassVar[str | None] = "_class_name"
    format_name: ClassVar[str | None] = None  # None: the class name

    @classmethod
    def format_tag(cls) -> dict:
        return {} if cls.format_key is None else {cls.format_key: cls.format_name or cls.__name__}

    def to_contents(self, **options) -> Contents:
        raise NotImplementedError(f"{type(self).__name__} does not implement to_contents")

    @classmethod
    def from_contents(cls, contents: Contents, directory: Path, **options):
        raise NotImplementedError(f"{cls.__name__} does not implement from_contents")

    def save_pretrained(self, directory: str | Path, *args, **options) -> Path:
        """Write this object into ``directory`` (replacing any previous folder) atomically, with checksums;
        other arguments go to :meth:`to_contents`."""
        contents = self.to_contents(*args, **options)
        contents.config = {**contents.config, **self.format_tag()}
        return write_pretrained(directory, contents, self.config_name, self.weights_name, self.tensor_library)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *args, **options):
        """Load a folder written by :meth:`save_pretrained` (every checksum verified first); other
        arguments go to :meth:`from_contents`."""
        directory = Path(directory)
        contents = read_pretrained(directory, cls.config_name, cls.weights_name, cls.tensor_library, cls.extra_files,
                                   tag=cls.format_tag())
        try:
            return cls.from_contents(contents, directory, *args, **options)
        except ArtifactError:
            raise
        except FacePrivacyError as exc:
            raise ArtifactError(f"{directory}: invalid {cls.__name__}: {exc}") from exc
        except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as exc:
            raise ArtifactError(f"{directory}: config and weights do not build a {cls.__name__}: {exc}") from exc


class PretrainedModule(Pretrained, torch.nn.Module):
    """A torch module whose ``__init__(**config)`` rebuilds it; subclasses set ``self.config`` to that dict.

    ``save_pretrained(directory, dtype=torch.float16)`` casts floating weights on the way out;
    ``from_pretrained(directory, map_location=...)`` loads them as float32, in eval mode.
    """

    config: dict[str, Any]
    weights_name: ClassVar[str] = WEIGHTS_NAME
    tensor_library: ClassVar[TensorLibrary] = "torch"

    def to_contents(self, dtype=None) -> Contents:
        tensors = {k: v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()
                   for k, v in self.state_dict().items()}
        return Contents(dict(self.config), tensors)

    @classmethod
    def config_kwargs(cls, config: dict) -> dict:
        """The constructor's keyword arguments in a saved config (``_``-prefixed keys are metadata)."""
        return {k: v for k, v in config.items() if not k.startswith("_")}

    @classmethod
    def from_contents(cls, contents: Contents, directory: Path, map_location="cpu"):
        model = cls(**cls.config_kwargs(contents.config))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in contents.tensors.items()})
        return model.to(map_location).eval()


def save_components(directory: str | Path, index_name: str, index: dict,
                    components: dict[str, Callable[[Path], Any]]) -> Path:
    """Write an index file and one sub-folder per component (``save(folder)`` each) as one atomic folder swap."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(directory)  # build folders of killed runs
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp{os.getpid()}.", dir=directory.parent))
    try:
        root = write_artifact(tmp / "built", {index_name: index})
        for name, save in components.items():
            save(root / name)
        replace_dir(root, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_index(directory: str | Path, index_name: str, class_name: str, kind: str, hint: str = "") -> dict:
    """The verified index of a ``kind`` folder written by :func:`save_components` (components verify themselves)."""
    directory = Path(directory)
    if not (directory / index_name).is_file():
        raise ArtifactError(f"{directory} is not a {kind} folder (no {index_name}){hint}")
    verify_artifact(directory, (index_name,), cover=(index_name,))
    index = read_json(directory, index_name)
    if index.get("_class_name") != class_name:
        raise ArtifactError(f"{directory / index_name} does not describe a {class_name}")
    return index
