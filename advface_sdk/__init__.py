"""AdvFace: adversarial template protection against face reconstruction.

>>> from advface_sdk import protect
>>> stored = protect(embeddings, model="fr128")   # store these instead of the raw embeddings
>>> stored = protect(embeddings, model="fr128", key="deploy.key")   # keyed: match against prepare_probe(...)
>>> stored = protect(embedding, model="fr128", key="deploy.key", salts=user_salt)   # 1:1, per-user salt
"""

from .artifact import load_artifact, save_artifact
from .backends import list_backends, register_backend
from .gallery import Gallery
from .keys import DeploymentKey, new_salt
from .protector import Protector, prepare_probe, protect

__all__ = ["protect", "prepare_probe", "Protector", "DeploymentKey", "new_salt", "Gallery", "load_artifact", "save_artifact",
           "list_backends", "register_backend"]
