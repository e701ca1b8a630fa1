"""One exception hierarchy for the whole project.

Every error a user can cause (bad input, missing files, incompatible artifacts)
derives from :class:`FacePrivacyError`; the input-shaped ones also derive from
``ValueError`` so generic callers can catch them the usual way.
"""


class FacePrivacyError(Exception):
    """Base class of every error raised on purpose by this project."""


class InvalidInputError(FacePrivacyError, ValueError):
    """An array, image or argument has the wrong shape, dtype or values."""


class NonFiniteError(InvalidInputError):
    """An input or a model output holds NaN or Inf."""


class ModelLoadError(FacePrivacyError):
    """A model file is missing, unreadable or not what was expected."""


class DataError(FacePrivacyError):
    """A dataset, image file or protocol file is missing or malformed."""


class NoFaceError(DataError):
    """The detector found no face in an image."""


class ArtifactError(FacePrivacyError):
    """A saved artifact is missing, corrupt or fails its checksum."""


class StoreMissingError(ArtifactError):
    """A gallery's templates are gone from its store (Milvus collection or Lite database dropped, FAISS segment lost)."""


class IncompatibleError(ArtifactError, ValueError):
    """An artifact was trained for another embedding space or recognizer."""


class BackendUnavailableError(FacePrivacyError, RuntimeError):
    """A requested execution backend or device is not available here."""


class DeploymentKeyError(FacePrivacyError, ValueError):
    """A deployment key file is missing, truncated, edited, too widely readable or not a key."""


class KeyMismatchError(IncompatibleError):
    """Templates, probes or a key belong to another deployment key or another protector."""


class SignatureError(ArtifactError):
    """An artifact's signature is missing where required, invalid, or by an untrusted key."""


class FacePrivacyWarning(UserWarning):
    """Base class of the project's warnings."""


class UnsignedArtifactWarning(FacePrivacyWarning):
    """An artifact was loaded without a signature by a trusted key."""


class DegenerateImageWarning(FacePrivacyWarning):
    """An image was embedded although its content is degenerate (tiny, constant, no face)."""


class DuplicateIdError(InvalidInputError):
    """An id is given twice, or is already enrolled in a gallery."""
