"""Face data: identity folders, the LFW pairs protocol, identity-disjoint splits."""

from .identity_folder import IdentityFolderDataset
from .lfw import PairsProtocol, pair_indices, parse_folds, read_pairs
from .splits import identity_split

__all__ = ["IdentityFolderDataset", "PairsProtocol", "pair_indices", "parse_folds", "read_pairs", "identity_split"]
