"""AdvFace: adversarial template protection against face reconstruction.

>>> from advface_sdk import protect
>>> stored = protect(embeddings, model="fr128")   # store these instead of the raw embeddings
"""

from .artifact import load_artifact, save_artifact
from .backends import list_backends, register_backend
from .protector import Protector, protect

__all__ = ["protect", "Protector", "load_artifact", "save_artifact", "list_backends", "register_backend"]
