"""AdvFace: adversarial template protection against face reconstruction.

>>> from advface_sdk import protect
>>> stored = protect(embeddings, model="fr128")   # store these instead of the raw embeddings
"""

from .artifact import load_artifact, save_artifact
from .backends import list_backends, register_backend
from .gallery import Gallery
from .protector import Protector, protect

__all__ = ["protect", "Protector", "Gallery", "load_artifact", "save_artifact", "list_backends", "register_backend"]
