"""Template-protection methods compared in the benchmark: ``create_method(name, **params)``.

Every method maps gallery embeddings to stored templates (``protect_gallery``), probes to what is
compared against them (``transform_probe``, same claimed user id) and scores rows (``match``).
"""

from .advface import AdvFace, AdvFaceKeyed, AdvFacePGD, AdvFaceSalted
from .base import KeyedMethod, ProtectionMethod
from .biohashing import BioHashing
from .gaussian import GaussianNoise
from .mlphash import MLPHash
from .polyprotect import PolyProtect
from .raw import NoProtection
from .registry import METHODS, create_method, list_methods, register_method
from .slerpface import SlerpFace

__all__ = ["ProtectionMethod", "KeyedMethod", "METHODS", "create_method", "list_methods", "register_method",
           "NoProtection", "GaussianNoise", "PolyProtect", "BioHashing", "MLPHash", "SlerpFace",
           "AdvFace", "AdvFaceKeyed", "AdvFaceSalted", "AdvFacePGD"]
