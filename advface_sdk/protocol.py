"""The identity-disjoint LFW protocol used for training and evaluating protection.

LFW's ten View-2 folds are identity-disjoint. Defender models (shadow decoder, noise generator)
train on identities of folds 1–5 plus those in no fold; utility is measured on the pairs of folds
6–10; the benchmark's attacker trains on identities of folds 6–8 and its victims come from folds 9–10.
"""

from __future__ import annotations

from facecore.data.lfw import PairsProtocol

DEFENDER_FOLDS = (0, 1, 2, 3, 4)
EVAL_FOLDS = (5, 6, 7, 8, 9)
ATTACKER_FOLDS = (5, 6, 7)
VICTIM_FOLDS = (8, 9)


def lfw_identity_groups(pairs: PairsProtocol, all_identities) -> dict[str, set[str]]:
    """Disjoint identity sets ``defender``, ``attacker``, ``victim`` (and ``evaluation`` = attacker ∪ victim)."""
    evaluation = pairs.identities_in_folds(EVAL_FOLDS)
    return {
        "defender": set(all_identities) - evaluation,
        "attacker": pairs.identities_in_folds(ATTACKER_FOLDS),
        "victim": pairs.identities_in_folds(VICTIM_FOLDS),
        "evaluation": evaluation,
    }
