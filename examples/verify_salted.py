"""1:1 verification with a deployment key and per-user salts, the mode the README recommends for 1:1.

    FACEPRIV_SHARED=/path/to/shared python examples/verify_salted.py [--recognizer fr128|fr512]

Each user gets a random salt (kept on their card or phone, never in the store). The store keeps only
``Q_u·R·advface(z)``; a claim "I am u" is checked by preparing the live probe with the deployment key and
u's salt and taking the cosine. The last columns show what the store's thief sees: with the key but the
wrong salt, a genuine probe no longer matches anything.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _lfw_pairs import THRESHOLD, setup
from advface_sdk import DeploymentKey, Protector, new_salt
from facecore.metrics import cosine_scores


def main() -> int:
    args, rec, names, enrol, live = setup(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory() as tmp:  # a real deployment keeps the key file with the matcher, not here
        plain = Protector(args.recognizer, recognizer_fingerprint=rec.fingerprint)
        key_file = DeploymentKey.generate(plain.artifact.protector_id).save(Path(tmp) / "deploy.key")
        protector = Protector(args.recognizer, recognizer_fingerprint=rec.fingerprint, key=key_file)

    salts = [new_salt() for _ in names]  # one per user, handed to the user at enrolment
    store = protector.protect(enrol, salts=salts)  # store only this, with protector.key.key_id

    print(f"key {protector.key.key_id}; accept if cosine > {THRESHOLD}")
    print(f"{'claim':<18} {'genuine':>8} {'impostor':>9} {'genuine, wrong salt':>20}")
    for k, name in enumerate(names):
        other = (k + 1) % len(names)
        gen = cosine_scores(store[k:k + 1], protector.prepare_probe(live[k:k + 1], salts=salts[k]))[0]
        imp = cosine_scores(store[k:k + 1], protector.prepare_probe(live[other:other + 1], salts=salts[k]))[0]
        stolen = cosine_scores(store[k:k + 1], protector.prepare_probe(live[k:k + 1], salts=salts[other]))[0]
        print(f"{name:<18} {gen:>8.3f} {imp:>9.3f} {stolen:>20.3f}   accept={gen > THRESHOLD} / {imp > THRESHOLD} / "
              f"{stolen > THRESHOLD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
