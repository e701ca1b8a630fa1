"""The benchmark: every protection method on one recognizer and LFW — utility, attacks, storage, cost.

Identity-disjoint LFW protocol (:mod:`advface_sdk.protocol`): AdvFace's shadow model and generator were
trained on the defender identities; utility is measured on the pairs of View-2 folds 6–10; the
attackers train on the identities of folds 6–8 and the victims are the people of folds 9–10.

>>> result = run_benchmark(BenchmarkConfig(recognizer="fr128", quick=True))
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from facecore.errors import ArtifactError, InvalidInputError
from facecore.metrics import roc_curve
from facecore.paths import cache_dir as default_cache_dir

from .attacks import (AttackerConfig, align_without_pairs, decoder_inputs, known_plaintext_attack, l2_normalize,
                      match_without_pairs, matched_rank1, procrustes, rank1, reidentification,
                      score_matrix, train_attacker)
from .denoise import SubspaceDenoiser
from .lfw_setup import OTHER, LfwEvaluation
from .methods import ProtectionMethod, create_method, list_methods
from .privacy import Victims, attack_success, decode_to_crops, pick_victims, random_face_baseline

DEFAULT_METHODS = ("none", "gaussian", "polyprotect", "biohashing", "mlphash", "slerpface", "advface", "advface-key",
                   "advface-pgd")
#: known-plaintext budgets of the threat matrix: (clean, stored) pairs of faces the thief enrolled himself
KNOWN_PAIRS = (100, 1000)
#: methods whose templates sit under a deployment key that the (b) thief undoes (``undo_key``)
KEYED = ("advface-key", "advface-bucketed")
ADVFACE = ("advface", *KEYED, "advface-salted")
ROC_FARS = np.logspace(-4, 0, 41)


@dataclass
class BenchmarkConfig:
    """What to run. ``artifact`` defaults to the shipped AdvFace default named like the recognizer;
    ``shadow`` (only for ``advface-pgd``) to ``shadows/<artifact name>`` beside the artifact, else the
    folder named in its training record, beside it."""

    recognizer: str = "fr128"
    evaluator: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    artifact: str | None = None
    shadow: str | None = None
    curve_budgets: tuple[float, ...] = (0.25, 0.5, 0.8, 1.2, 1.6)
    curve_artifacts: tuple[str, ...] = ()
    attacker: AttackerConfig = field(default_factory=AttackerConfig)
    seed: int = 0
    quick: bool = False
    max_victims: int | None = None
    pgd_victims: int = 48
    pgd_pairs: int = 100
    pgd_steps: int = 20
    timing_batch: int = 256
    timing_repeats: int = 7
    grid_victims: int = 6
    face_prior: bool = True  # (e): decode through the VIGFace face autoencoder (fr128 prototypes)
    cache_dir: str | None = None
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(list_methods()))
        if unknown:
            raise InvalidInputError(f"unknown methods {unknown}; available: {', '.join(list_methods())}")
        if not self.methods:
            raise InvalidInputError("give at least one method")
        self.methods = tuple(dict.fromkeys(("none",) + tuple(self.methods)))  # the raw reference always runs

    @classmethod
    def quick_preset(cls, **overrides) -> "BenchmarkConfig":
        """CI-sized smoke test, not a measurement: ~80 attacker faces, a width-8 decoder, 16 victims, short PGD."""
        base = dict(quick=True, max_victims=16, pgd_victims=4, pgd_pairs=40, pgd_steps=2, timing_batch=64,
                    timing_repeats=3, grid_victims=4, curve_budgets=(0.5,),
                    attacker=AttackerConfig(pixel_epochs=2, id_epochs=1, adaptive_pixel_epochs=1, adaptive_id_epochs=0,
                                            adaptive_max_epochs=3, patience=1, val_fraction=0.2, width=8, batch_size=32))
        return cls(**{**base, **overrides})


QUICK_ATTACKER_IDENTITIES = 30


def _median_us(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) / n * 1e6)


class _Stages:
    """Wall-clock minutes per stage, with a progress line."""

    def __init__(self, progress: bool):
        self.minutes: dict[str, float] = {}
        self.progress = progress
        self._t0 = time.perf_counter()

    def __call__(self, name: str):
        stages = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()
                if stages.progress:
                    tqdm.write(f"[benchmark] {name} ...")

            def __exit__(self, *exc):
                stages.minutes[name] = round(stages.minutes.get(name, 0.0) + (time.perf_counter() - self.t) / 60, 3)

        return _Ctx()

    @property
    def total(self) -> float:
        return round((time.perf_counter() - self._t0) / 60, 2)


def _roc_summary(scores: np.ndarray, issame: np.ndarray) -> dict:
    far, tar, _ = roc_curve(scores, issame)
    return {"far": ROC_FARS.tolist(), "tar": np.interp(ROC_FARS, far, tar).round(5).tolist()}


class Benchmark:
    """One benchmark run; :meth:`run` returns the JSON-ready result, :attr:`pictures` the image grid."""

    def __init__(self, config: BenchmarkConfig):
        self.cfg = config
        torch.manual_seed(config.seed)
        self.ev = LfwEvaluation(config.recognizer, config.evaluator or OTHER.get(config.recognizer, "fr512"),
                                max_victims=config.max_victims, seed=config.seed)
        self.cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir() / "benchmark"
        self.stages = _Stages(config.progress)
        self.pictures: dict[str, np.ndarray] = {}
        self.notes: list[str] = []

    # ------------------------------------------------------------------ setup
    def _artifact(self):
        from ..artifact import load_artifact

        name = self.cfg.artifact or self.cfg.recognizer
        try:
            art = load_artifact(name)
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}. Pass --artifact FOLDER (an AdvFace generator for {self.cfg.recognizer}) "
                                "or leave advface out of --methods") from None
        art.check_recognizer(self.ev.recognizer.fingerprint)
        return art

    def _shadow(self, art) -> str | None:
        if self.cfg.shadow:
            return self.cfg.shadow
        name = art.config.get("training", {}).get("shadow")
        cands = [art.directory.parent / "shadows" / art.directory.name] + ([art.directory.parent / name] if name else [])
        return next((str(c) for c in cands if (c / "config.json").is_file()), None)

    def _methods(self) -> dict[str, ProtectionMethod]:
        art = None
        if {*ADVFACE, "advface-pgd", "gaussian"} & set(self.cfg.methods):
            needs = {*ADVFACE, "advface-pgd"} & set(self.cfg.methods)
            art = self._artifact() if needs or self.cfg.artifact or self._has_default() else None
        budget = float(art.config["budget"]) if art is not None else 0.5
        out = {}
        for name in self.cfg.methods:
            if name == "gaussian":
                m = create_method(name, budget=budget, seed=self.cfg.seed)
            elif name in ADVFACE:
                m = create_method(name, artifact=str(art.directory), seed=self.cfg.seed)
            elif name == "advface-pgd":
                shadow = self._shadow(art)
                if shadow is None:
                    self.notes.append("advface-pgd skipped: no shadow decoder found (pass --shadow)")
                    continue
                m = create_method(name, shadow=shadow, recognizer=self.cfg.recognizer, artifact=str(art.directory),
                                  steps=self.cfg.pgd_steps, seed=self.cfg.seed)
            else:
                m = create_method(name, seed=self.cfg.seed)
            out[name] = m.fit(self.ev.emb[self.ev.mask("defender")])
        return out

    def _has_default(self) -> bool:
        from ..artifact import default_artifacts

        return self.cfg.recognizer in default_artifacts()

    def _attacker_set(self):
        """The attacker's faces (``FaceTrainingSet.build`` on his identities, with the embeddings already
        computed for the whole dataset), their global user ids (disjoint from the victims) and dataset rows."""
        import cv2

        from facecore.training.face_pack import FaceTrainingSet

        names = sorted(self.ev.groups["attacker"])
        if self.cfg.quick:
            names = names[:QUICK_ATTACKER_IDENTITIES]
        ds = self.ev.dataset
        sub = ds.subset(names)
        rows = np.flatnonzero(np.isin(np.asarray(ds.identities)[ds.labels], names))
        size = self.cfg.attacker.size
        images = np.stack([cv2.resize(ds.load(int(i)), (size, size), interpolation=cv2.INTER_AREA)[..., ::-1] for i in rows])
        train = FaceTrainingSet(images, self.ev.emb[rows].astype(np.float32), sub.labels.copy(), list(sub.identities),
                                sub.relpaths, self.ev.recognizer.fingerprint)
        users = ds.labels[rows].astype(np.int64)  # global ids: disjoint from victims
        return train, users, rows

    def _fr128(self) -> np.ndarray:
        """fr128 embeddings of the whole dataset (the face prior's prototype space)."""
        if self.ev.recognizer_name == "fr128":
            return self.ev.emb
        if self.ev.evaluator_name == "fr128":
            return self.ev.emb_eval
        from facecore.embeddings import extract_embeddings
        from facecore.recognizers import create_recognizer

        return extract_embeddings(create_recognizer("fr128"), self.ev.dataset)

    def _validator(self, train, rows):
        """What the adaptive attacker watches on his held-out identities: type II by the evaluator's torch copy."""
        from ..training.reconstruction import Validator

        partner = rows[train.partners(self.cfg.seed)]
        return Validator(self.ev.evaluator.to_torch(), torch.from_numpy(self.ev.emb_eval[partner].astype(np.float32)),
                         float(self.ev.thresholds[1]))

    # ------------------------------------------------------------------ pieces
    def _success(self, decoder, templates: np.ndarray, victims: Victims, keep: int = 0, tag: str | None = None) -> dict:
        rec = decode_to_crops(decoder, decoder_inputs(templates))
        return self._score(rec, victims, keep, tag)

    def _score(self, rec: np.ndarray, victims: Victims, keep: int = 0, tag: str | None = None) -> dict:
        thr_p, thr_e = self.ev.thresholds
        truth = self.ev.true_rgb(victims.enrolled, self.cfg.attacker.size)
        if tag and keep:
            self.pictures[tag] = rec[:keep]
        return attack_success(rec, victims, self.ev.recognizer, self.ev.evaluator, self.ev.emb, self.ev.emb_eval,
                              thr_p, thr_e, truth, reid=True)

    def _utility(self, method: ProtectionMethod, pairs: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
        left, right, issame, _ = self.ev.eval_pairs
        if pairs is not None:
            left, right, issame = left[pairs], right[pairs], issame[pairs]
        labels = self.ev.dataset.labels
        stored = method.protect_gallery(self.ev.emb[left], labels[left])
        probes = method.transform_probe(self.ev.emb[right], labels[left])  # the probe claims the enrolled identity
        scores = method.match(probes, stored)
        return self.ev.utility_from_scores(scores, pairs), scores

    def _pgd_pairs(self) -> np.ndarray:
        _, _, issame, folds = self.ev.eval_pairs
        rng = np.random.default_rng(self.cfg.seed)
        per = max(2, self.cfg.pgd_pairs // (2 * len(np.unique(folds))))
        picks = [rng.choice(np.flatnonzero((folds == f) & (issame == s)), per, replace=False)
                 for f in np.unique(folds) for s in (True, False)]
        return np.sort(np.concatenate(picks))

    def _cost(self, method: ProtectionMethod, slow: bool) -> dict:
        n = 8 if slow else self.cfg.timing_batch
        reps = 1 if slow else self.cfg.timing_repeats
        z = self.ev.emb[:n]
        users = np.arange(n) + 10_000_000  # fresh users: key generation is part of enrolment
        stored = method.protect_gallery(z, users)
        probes = self.ev.emb[n:2 * n]
        return {"protect_us": _median_us(lambda: method.protect_gallery(z, users), n, reps),
                "match_us": _median_us(lambda: method.match(method.transform_probe(probes, users), stored), n, reps),
                "batch": n, "repeats": reps}

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        cfg, ev, st = self.cfg, self.ev, self.stages
        with st("load data and methods"):
            labels = ev.dataset.labels
            victims = pick_victims(labels, ev.mask("victim"), cfg.max_victims, cfg.seed)
            thr_p, thr_e = ev.thresholds
            methods = self._methods()
            train, train_users, train_rows = self._attacker_set()
            validator = self._validator(train, train_rows)
            prior = self._prior_setup(train, train_rows) if cfg.face_prior else None
            rec_torch = ev.recognizer.to_torch()
            dim = int(ev.emb.shape[1])
            chance = random_face_baseline(victims, labels, ev.emb_eval, thr_e, np.flatnonzero(ev.mask("victim")), cfg.seed)
        keep = min(cfg.grid_victims, len(victims.enrolled))
        self.pictures["true"] = ev.true_rgb(victims.enrolled[:keep], cfg.attacker.size)

        with st("train non-adaptive attacker"):
            base_dec, base_info = train_attacker(train, rec_torch, cfg.attacker, cache_dir=self.cache, device=cfg.device,
                                                 progress=cfg.progress)
            denoiser = SubspaceDenoiser.fit(train.embeddings)  # PCA on his clean faces: the same decoder, denoised input
        pgd_victims = Victims(victims.enrolled[:cfg.pgd_victims], victims.probe[:cfg.pgd_victims])
        rows: dict[str, dict] = {}
        adaptive_decoders: dict[str, object] = {}
        priors: dict[str, object] = {}
        for name, method in methods.items():
            slow = name == "advface-pgd"
            vic = pgd_victims if slow else victims
            row: dict = {"params": method.to_dict(), "binary": method.binary, "keyed": method.keyed, "notes": []}
            with st(f"{name}: utility, storage, cost"):
                pairs = self._pgd_pairs() if slow else None
                util, scores = self._utility(method, pairs)
                issame = ev.eval_pairs[2] if pairs is None else ev.eval_pairs[2][pairs]
                row["utility"] = {**util, "pairs": int(len(scores))}
                row["roc"] = _roc_summary(scores, issame)
                row["storage"] = {"bytes_per_template": method.bytes_per_template(dim), "values": method.output_dim(dim),
                                  "expansion_vs_float32": round(method.bytes_per_template(dim) / (4 * dim), 4)}
                row["cost"] = self._cost(method, slow)
            with st(f"{name}: attacks"):
                stolen = method.protect_gallery(ev.emb[vic.enrolled], labels[vic.enrolled])
                fits = not method.binary and stolen.shape[1] == dim
                row["attack"] = {"victims": int(len(vic.enrolled))}
                row["attack"]["non_adaptive"] = (
                    self._success(base_dec, stolen, vic, keep if name in ("none", "advface") else 0,
                                  f"{name} (non-adaptive)") if fits else None)
                row["attack"]["non_adaptive_denoised"] = self._success(base_dec, denoiser(stolen), vic) if fits else None
                if not fits:
                    row["notes"].append("non-adaptive: n/a (template is not an embedding of the recognizer's size)")
                row["attack"]["adaptive"] = self._adaptive(name, method, stolen, vic, train, train_users, rec_torch,
                                                           base_dec, adaptive_decoders, keep, row["notes"], validator)
                if prior is not None and not slow:
                    row["attack"]["face_prior"] = self._face_prior(name, method, stolen, vic, train, train_users, prior,
                                                                   priors, keep)
                cand = victims.probe  # clean embeddings of *other* images of every victim
                sm = score_matrix(method, stolen, labels[vic.enrolled], ev.emb[cand])
                row["attack"]["embedding"] = reidentification(sm, labels[vic.enrolled], labels[cand])
                if name in (*KEYED, "advface-salted"):
                    self._key_stolen(method, stolen, labels[vic.enrolled], vic, base_dec, denoiser, adaptive_decoders, row,
                                     priors, keep)
                row["threats"] = self._threats(method, stolen, vic, train, train_users, base_dec, dim)
            rows[name] = row

        curve = self._curve(methods, base_dec, victims)
        config = asdict(cfg)
        return {
            "recognizer": cfg.recognizer, "evaluator": ev.evaluator_name, "dim": dim,
            "recognizer_fingerprint": ev.recognizer.fingerprint, "config": config,
            "protocol": {"utility": "LFW View-2 folds 6-10 (10-fold-style accuracy over those 5 folds), left image stored, "
                                    "right image as clean probe claiming the left identity",
                         "attacker_identities": int(len(np.unique(train.labels))), "attacker_images": len(train),
                         "victims": int(len(victims.enrolled)), "pgd_victims": int(len(pgd_victims.enrolled))},
            "thresholds_far1e-3": {"protected": thr_p, "evaluator": thr_e},
            "random_face_type2": chance,
            "attackers": {"non_adaptive": base_info, "denoiser": denoiser.info,
                          "adaptive_budget": cfg.attacker.budget(True), "non_adaptive_budget": cfg.attacker.budget(False),
                          "face_prior_budget": ("template → fr128 prototype map (ridge or 3-layer MLP, chosen on held-out "
                                                "attacker identities) learned on the attacker's faces under the method "
                                                "(own key for keyed methods), rendered by the VIGFace face autoencoder "
                                                "(vigface64, trained on LFW identities outside folds 6-10) from the "
                                                "attacker's mean latent") if cfg.face_prior else None},
            "methods": rows, "curve": curve, "notes": self.notes,
            "timing_minutes": {**st.minutes, "total": st.total},
        }

    def _attacker_method(self, method: ProtectionMethod) -> ProtectionMethod:
        """The method as the attacker runs it: the public SDK with his own secrets and noise draws (another seed)."""
        if method.name == "none":
            return method
        params = {k: v for k, v in method.to_dict().items() if k not in ("name", "seed")}
        return create_method(method.name, **{**params, "seed": self.cfg.seed + 1}).fit(self.ev.emb[self.ev.mask("defender")])

    def _attacker_templates(self, name, method, train, train_users) -> np.ndarray:
        """The method's templates of the attacker's own faces (advface-key/-salted: under a key and salts of his own)."""
        if name in (*KEYED, "advface-salted"):
            method = self._attacker_method(method)
        return decoder_inputs(method.protect_gallery(train.embeddings, train_users))

    def _prior_setup(self, train, rows):
        from .face_prior import load_face_prior

        return {"autoencoder": load_face_prior(), "prototypes": self._fr128()[rows]}

    def _face_prior(self, name, method, stolen, vic, train, train_users, prior, priors, keep) -> dict:
        """(e) Stolen template → fr128 prototype (map learned on the attacker's own faces, key secret) → face prior."""
        from .face_prior import FacePriorAttacker

        with self.stages(f"{name}: face-prior attacker"):
            inputs = self._attacker_templates(name, method, train, train_users)
            fp = FacePriorAttacker.fit(inputs, prior["prototypes"], train.images, train.labels, prior["autoencoder"],
                                       self.cfg.attacker.val_fraction, self.cfg.seed)
            priors[name] = fp
            rec = fp.reconstruct(decoder_inputs(stolen))
            tag = f"{name} (face prior)" if name in ("none", "advface", *KEYED) else None
            return {**self._score(rec, vic, keep if tag else 0, tag), "attacker": fp.info}

    def _adaptive(self, name, method, stolen, vic, train, train_users, rec_torch, base_dec, decoders, keep, notes,
                  validator=None):
        cfg = self.cfg
        if name == "none":
            notes.append("adaptive = non-adaptive (the scheme is the identity)")
            return self._success(base_dec, stolen, vic)
        if name == "advface-pgd":
            if "advface" not in decoders:
                notes.append("adaptive: n/a (needs the advface adaptive attacker to transfer)")
                return None
            notes.append("adaptive: the advface-generator adaptive attacker (PGD on every attacker face is too slow to train on)")
            return self._success(decoders["advface"], stolen, vic, keep, f"{name} (adaptive)")
        if name in KEYED:  # key secret: the attacker protects his faces with a key of his own
            notes.append("adaptive: trained on the attacker's faces protected with his own deployment key (the key is secret)")
        inputs = self._attacker_templates(name, method, train, train_users)
        dec, info = train_attacker(train, rec_torch, cfg.attacker, adaptive=True, inputs=inputs, init=base_dec,
                                   cache_dir=self.cache, device=cfg.device, progress=cfg.progress, validator=validator)
        decoders[name] = dec
        tag = f"{name} (adaptive)" if name in ("advface", *KEYED) else None
        return {**self._success(dec, stolen, vic, keep if tag else 0, tag), "train": info}

    def _key_stolen(self, method, stolen, users, vic, base_dec, denoiser, decoders, row, priors=None, keep=0) -> None:
        """(b) Key stolen: the thief undoes the key's rotation(s) and attacks plain AdvFace templates.

        Salted templates ``Q_u·R·ĝ``: he holds the key but not the users' salts, so undoing ``R`` leaves each user's
        template under ``Rᵀ·Q_u·R``, as unknown to him as ``Q_u·R`` was. His adaptive decoder, trained on faces of
        his own under the key and salts of his own, is then the (a) decoder: with the stolen key instead of his own
        the templates it trains on have the same distribution (``Q·R`` is Haar-random for any ``R``); so is his
        face-prior map.
        """
        a = row["attack"]
        plain = method.undo_key(stolen, users)
        a["non_adaptive_key_stolen"] = self._success(base_dec, plain, vic)
        a["non_adaptive_denoised_key_stolen"] = self._success(base_dec, denoiser(plain), vic)
        if method.name == "advface-salted":  # the (a) attackers on the same stored templates: their (a) results
            a["adaptive_key_stolen"] = a["adaptive"] and {k: v for k, v in a["adaptive"].items() if k != "train"}
            if a.get("face_prior") is not None:
                a["face_prior_key_stolen"] = {k: v for k, v in a["face_prior"].items() if k != "attacker"}
            # linking without the salts: the undone templates by cosine against the victims' clean photos
            a["embedding_key_stolen"] = reidentification(
                l2_normalize(plain) @ l2_normalize(self.ev.emb[vic.probe]).T, users, self.ev.dataset.labels[vic.probe])
            row["notes"].append("(b) without the users' salts: the adaptive decoder and the face-prior map are the (a) "
                                "ones (trained under the attacker's own key and salts; with the stolen key their training "
                                "data has the same distribution)")
            return
        adaptive, prior, tag = decoders.get("advface"), (priors or {}).get("advface"), f"{method.name} (b)"
        a["adaptive_key_stolen"] = None if adaptive is None else self._success(adaptive, plain, vic, keep, f"{tag} adaptive")
        if adaptive is None:
            row["notes"].append("adaptive with the key stolen: n/a (needs the advface adaptive attacker; run advface too)")
        if prior is not None:
            a["face_prior_key_stolen"] = self._score(prior.reconstruct(decoder_inputs(plain)), vic, keep, f"{tag} face prior")

    def _threats(self, method, stolen, vic, train, train_users, base_dec, dim) -> dict:
        """Attacks without the key (none needs it for unkeyed methods): direct re-identification, (c) alignment
        without pairs, (d) known plaintext with ``KNOWN_PAIRS`` pairs; mapped templates are also decoded."""
        cand = self.ev.emb[vic.probe].astype(np.float64)
        s = decoder_inputs(stolen).astype(np.float64)
        scale = float(np.linalg.norm(train.embeddings, axis=1).mean())

        def decoded(mapped: np.ndarray):
            return self._success(base_dec, mapped * scale, vic)["type2"] if mapped.shape[1] == dim else None

        out = {"reid_key_secret": rank1(s, cand) if s.shape[1] == dim else None,
               "alignment": self._alignment(method, s, cand, self.ev.dataset.labels[vic.probe], decoded)}
        rng = np.random.default_rng(self.cfg.seed)
        # the thief sees which store partition (a bucketed key's bucket) each template sits in: one map per partition
        part_of = getattr(method, "partitions", lambda users: np.zeros(len(users), np.int64))
        stolen_parts = part_of(self.ev.dataset.labels[vic.enrolled])
        for n in KNOWN_PAIRS:
            pick = rng.choice(len(train), min(n, len(train)), replace=False)
            pairs = decoder_inputs(method.protect_gallery(train.embeddings[pick], train_users[pick])).astype(np.float64)
            best = known_plaintext_attack(train.embeddings[pick], pairs, s, cand, part_of(train_users[pick]), stolen_parts)
            out[f"known_plaintext_{n}"] = {"pairs": int(len(pick)), "rank1": best[0], "map": best[1],
                                           "type2": decoded(best[2] / np.linalg.norm(best[2], axis=1, keepdims=True))}
        return out

    def _alignment(self, method, s, cand, cand_users, decoded) -> dict:
        """(c) Every pair-free attacker on the stolen templates ``s``; the row reports the strongest.

        The candidates are clean embeddings of other photos of every victim. The Gromov–Wasserstein matcher
        compares similarity structures, so it also runs against the photos as the attacker protects them
        with the public SDK (his own key and salts for keyed methods): the view whose structure is closest to
        the stolen set's. Its matching is the re-identification; Procrustes on it maps templates for decoding.
        """
        aligned = align_without_pairs(s, cand)
        found = {"profile + Procrustes (clean photos)": {"rank1": rank1(aligned, cand), "type2": decoded(aligned)}}
        views = {"clean photos": cand}
        if method.name not in ("none", "advface-pgd"):  # PGD on every candidate is too slow; none = clean
            views["photos under the public SDK"] = decoder_inputs(
                self._attacker_method(method).protect_gallery(cand.astype(np.float32), cand_users)).astype(np.float64)
        x = l2_normalize(s)
        for view, y in views.items():
            m = match_without_pairs(s, y)
            mapped = l2_normalize(x @ procrustes(x, l2_normalize(cand[m["match"]])))
            found[f"Gromov-Wasserstein ({view})"] = {"rank1": matched_rank1(m["match"]),
                                                     "type2": decoded(mapped), "epsilon": m["epsilon"]}
        best = max(found, key=lambda k: found[k]["rank1"])
        return {**found[best], "attacker": best, "attackers": found}

    def _curve(self, methods, base_dec, victims) -> list[dict]:
        """Privacy (non-adaptive attacker) against utility over noise budgets: gaussian and AdvFace artifacts."""
        points = []
        with self.stages("privacy-utility curve"):
            specs = [("gaussian", {"budget": b}) for b in self.cfg.curve_budgets]
            if "advface" in methods:
                specs.append(("advface", {"artifact": methods["advface"].artifact}))
            specs += [("advface", {"artifact": a}) for a in self.cfg.curve_artifacts]
            for name, params in specs:
                m = create_method(name, seed=self.cfg.seed, **params).fit(self.ev.emb[self.ev.mask("defender")])
                util, _ = self._utility(m)
                stolen = m.protect_gallery(self.ev.emb[victims.enrolled], self.ev.dataset.labels[victims.enrolled])
                att = self._success(base_dec, stolen, victims)
                points.append({"method": name, "budget": float(m.budget), "accuracy": util["accuracy"],
                               "tar@far=0.001": util["tar@far=0.001"], "type2": att["type2"], "type1": att["type1"],
                               **({"artifact": Path(params["artifact"]).name} if "artifact" in params else {})})
        return points


def run_benchmark(config: BenchmarkConfig) -> tuple[dict, dict[str, np.ndarray]]:
    """Run the benchmark; returns the JSON-ready result and the picture-grid images (uint8 RGB)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    bench = Benchmark(config)
    result = bench.run()
    return result, bench.pictures


def config_from_dict(data: dict) -> BenchmarkConfig:
    """Rebuild a :class:`BenchmarkConfig` from ``result["config"]``."""
    known = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    kw = {k: v for k, v in data.items() if k in known}
    kw["attacker"] = AttackerConfig(**kw.get("attacker", {}))
    for k in ("methods", "curve_budgets", "curve_artifacts"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return BenchmarkConfig(**kw)
