"""InsightFace adapter: recognition models and detector+recognizer packs loaded through InsightFace.

InsightFace guesses a recognizer's ``input_mean``/``input_std`` from ONNX node names and always
feeds RGB; both adapters here replace that guess with an explicit facecore :class:`Preprocessing`
(given, or looked up by the model's SHA-256 among the shared built-in recognizers), so their
embeddings equal those of the generic ONNX adapter on the same crops.

``InsightFaceRecognizer("model.onnx")`` embeds aligned crops; ``InsightFacePack("pack/")`` also
detects (SCRFD), aligns to the 5-point ArcFace template and embeds raw photos.
"""

from __future__ import annotations

import types
import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from facecore.artifacts import sha256_file
from facecore.errors import InvalidInputError, ModelLoadError, NoFaceError
from facecore.images import flag_degenerate, read_image
from facecore.paths import ENV_VAR, shared_root
from facecore.recognizers.base import FileRecognizer, Preprocessing
from facecore.recognizers.registry import BUILTIN

__all__ = ["ArcFaceEmbedder", "InsightFaceRecognizer", "InsightFacePack"]

_DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def _builtin_match(model_path: Path, sha: str) -> tuple[str, Preprocessing] | None:
    """The built-in recognizer (name, preprocessing) whose shared file has these bytes, if any."""
    root = shared_root(required=False)
    if root is None:
        return None
    size = model_path.stat().st_size
    for name, (rel, pre) in BUILTIN.items():
        candidate = root / rel
        if candidate.is_file() and candidate.stat().st_size == size and sha256_file(candidate) == sha:
            return name, pre
    return None


def _resolve_preprocessing(model_path: Path, sha: str, preprocessing, guess) -> tuple[str, Preprocessing]:
    """(name, preprocessing): the given one, else the matching built-in's, else an error."""
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing(**preprocessing)
    if preprocessing is not None:
        return model_path.stem, preprocessing
    match = _builtin_match(model_path, sha)
    if match is not None:
        return match
    raise InvalidInputError(
        f"{model_path}: unknown recognizer, pass preprocessing=Preprocessing(channel_order, mean, std) "
        f"(InsightFace would guess mean={guess[0]}, std={guess[1]}, RGB from node names, often wrongly); "
        f"only the shared built-ins ({', '.join(BUILTIN)}) are recognised automatically, with {ENV_VAR} set"
    )


def _get_feat(self, imgs):
    """``ArcFaceONNX.get_feat`` honouring ``self.swapRB`` (InsightFace always swaps BGR to RGB)."""
    if not isinstance(imgs, list):
        imgs = [imgs]
    blob = cv2.dnn.blobFromImages(imgs, 1.0 / self.input_std, self.input_size,
                                  (self.input_mean, self.input_mean, self.input_mean), swapRB=self.swapRB)
    return self.session.run(self.output_names, {self.input_name: self._coerce_input_blob(blob)})[0]


class ArcFaceEmbedder(FileRecognizer):
    """A :class:`FileRecognizer` around an InsightFace ``ArcFaceONNX`` whose preprocessing is set explicitly."""

    def __init__(self, model, model_path: Path, preprocessing, name_prefix: str):
        if model is None or getattr(model, "taskname", None) != "recognition":
            raise ModelLoadError(f"InsightFace does not take {model_path} for a recognition model "
                                 "(expected an .onnx with one square NCHW input of 112 or more)")
        sha = sha256_file(model_path)
        name, pre = _resolve_preprocessing(model_path, sha, preprocessing, (model.input_mean, model.input_std))
        batch = model.input_shape[0]
        super().__init__(model_path, pre, f"{name_prefix}-{name}", sha,
                         batch if isinstance(batch, int) and batch > 0 else None)
        self.model = model
        if tuple(model.input_size) != self._pre.input_size:
            raise ModelLoadError(f"{self.model_path}: the model takes {model.input_size[0]}x{model.input_size[1]} "
                                 f"input but preprocessing says {self._pre.input_size[0]}x{self._pre.input_size[1]}")
        model.input_mean = float(self._pre.mean)
        model.input_std = float(self._pre.std)
        model.swapRB = self._pre.channel_order == "RGB"
        model.get_feat = types.MethodType(_get_feat, model)  # also used by FaceAnalysis.get
        self.set_dim(model.output_shape[-1])

    def infer(self, crops: np.ndarray) -> np.ndarray:
        out = self.model.get_feat(list(crops))
        return out.reshape(len(out), -1)


class InsightFaceRecognizer(ArcFaceEmbedder):
    """A recognition ONNX loaded with ``insightface.model_zoo.get_model``, explicit preprocessing.

    ``preprocessing`` defaults to that of the shared built-in with the same file bytes
    (needs ``$FACEPRIV_SHARED``); other models must pass it. Fixed-batch models run in a loop.
    """

    def __init__(self, model_path: str | Path, preprocessing: Preprocessing | dict | None = None,
                 providers: Sequence[str] | None = None):
        from insightface import model_zoo

        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"recognizer model not found: {path}")
        try:
            model = model_zoo.get_model(str(path), providers=list(providers or _DEFAULT_PROVIDERS))
        except Exception as exc:
            raise ModelLoadError(f"InsightFace cannot load {path}: {exc}") from exc
        super().__init__(model, path, preprocessing, "insightface")


class InsightFacePack(ArcFaceEmbedder):
    """An InsightFace model pack (a folder with a detector and a recognizer ONNX) via ``FaceAnalysis``.

    ``root`` is the pack folder itself (e.g. one holding ``scrfd_500m_bnkps.onnx`` and
    ``fr_feature.onnx``), or an InsightFace root holding ``models/<name>`` when ``name`` is given.
    Detects the largest, most central face (InsightFace's ``max_num=1`` metric), aligns it to the
    5-point ArcFace template and embeds it; ``embed`` takes already aligned crops.
    """

    def __init__(self, root: str | Path, det_size: tuple[int, int] = (640, 640),
                 preprocessing: Preprocessing | dict | None = None, providers: Sequence[str] | None = None,
                 det_thresh: float = 0.5, name: str | None = None):
        from insightface.app import FaceAnalysis

        if isinstance(det_thresh, bool) or not isinstance(det_thresh, (int, float, np.integer, np.floating)) \
                or not 0 < det_thresh < 1:
            raise InvalidInputError(f"det_thresh must be a detector score in (0, 1), got {det_thresh!r}")
        if len(det_size) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 32 and v % 32 == 0 for v in det_size):
            raise InvalidInputError(f"det_size must be two multiples of 32 (the detector's stride), got {det_size!r}")
        folder = Path(root).expanduser()
        if name is not None:
            folder = folder / "models" / name
        if not folder.is_dir():
            raise ModelLoadError(f"model pack folder not found: {folder} (a folder holding a detector and a recognizer .onnx)")
        files = sorted(folder.glob("*.onnx"))
        broken = [f.name for f in files if not f.is_file()]
        if not files or broken:
            what = f"broken links or unreadable files {broken}" if broken else "no .onnx files"
            raise ModelLoadError(f"model pack {folder} has {what}; it needs a detector (e.g. scrfd_500m_bnkps.onnx) "
                                 "and a recognizer (e.g. fr_feature.onnx)")
        folder = folder.resolve()
        try:
            # An absolute name makes FaceAnalysis use the folder itself: newer versions accept a
            # directory, older ones join <root>/models/<name>, which an absolute name overrides.
            app = FaceAnalysis(name=str(folder), root=str(folder.parent), allowed_modules=["detection", "recognition"],
                               providers=list(providers or _DEFAULT_PROVIDERS))
        except AssertionError:
            app = None  # FaceAnalysis asserts that a detector was found
        except Exception as exc:
            raise ModelLoadError(f"InsightFace cannot load the model pack {folder}: {exc}") from exc
        missing = [task for task in ("detection", "recognition") if app is None or task not in app.models]
        if missing:
            raise ModelLoadError(f"model pack {folder} has no {' and no '.join(missing)} model among "
                                 f"{[f.name for f in files]}; add e.g. scrfd_500m_bnkps.onnx / fr_feature.onnx")
        if not getattr(app.det_model, "use_kps", False):
            raise ModelLoadError(f"the detector {app.det_model.model_file} gives no 5-point landmarks; use a *_kps SCRFD model")
        app.prepare(ctx_id=0, det_thresh=float(det_thresh), det_size=tuple(det_size))
        recognition = app.models["recognition"]
        super().__init__(recognition, Path(recognition.model_file), preprocessing, "insightface-pack")
        self.app = app
        self.folder = folder
        self.det_thresh = float(det_thresh)

    def _detect_align(self, image: np.ndarray, label: str) -> tuple[np.ndarray, float, np.ndarray]:
        from insightface.utils import face_align

        bboxes, kpss = self.app.det_model.detect(image, max_num=1, metric="default")
        if len(bboxes) == 0:
            raise NoFaceError(f"no face found in {label} (detector threshold {self.det_thresh}); "
                              "pass a photo with a visible face or lower det_thresh")
        with warnings.catch_warnings():  # InsightFace calls scikit-image's deprecated SimilarityTransform.estimate
            warnings.filterwarnings("ignore", message=".*estimate.* is deprecated", category=FutureWarning)
            crop = face_align.norm_crop(image, landmark=kpss[0], image_size=self._pre.input_size[0])
        return crop, float(bboxes[0, 4]), kpss[0].astype(np.float32)

    def detect_align(self, image_bgr: np.ndarray | str | Path) -> tuple[np.ndarray, float, np.ndarray]:
        """Aligned uint8 BGR crop, detection score and the 5 keypoints ``(5, 2)`` of the main face."""
        image, label = _load(image_bgr, "the image")
        return self._detect_align(image, label)

    def embed_photos(self, images: Sequence[np.ndarray | str | Path]) -> np.ndarray:
        """Detect, align and embed raw photos (arrays or paths): float32 ``(N, dim)``."""
        if isinstance(images, (str, Path, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
            images = [images]
        try:
            images = images if isinstance(images, np.ndarray) else list(images)
        except TypeError:
            raise InvalidInputError(f"photos must be a sequence of images or paths, got {type(images).__name__}") from None
        if len(images) == 0:
            raise InvalidInputError("empty list of photos: pass at least one image or path")
        crops = [self._detect_align(*_load(item, f"image #{i}"))[0]
                 for i, item in enumerate(tqdm(images, desc="detect+align", unit="img", disable=len(images) < 50))]
        return self.embed(np.stack(crops))


def _load(image, default_label: str) -> tuple[np.ndarray, str]:
    """A photo as uint8 BGR ``(H, W, 3)`` and a label for error messages."""
    if isinstance(image, (str, Path)):
        return read_image(image), Path(image).name
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.ndim == 3 and image.shape[-1] != 3 or image.dtype != np.uint8 or not image.size:
        raise InvalidInputError(f"{default_label} must be a non-empty uint8 BGR (H, W, 3) array as cv2 reads it "
                                f"(or grey (H, W)), got {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    flag_degenerate(image, default_label)
    return np.ascontiguousarray(image), default_label
