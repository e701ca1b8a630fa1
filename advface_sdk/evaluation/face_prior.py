"""(e) The face-prior attacker: decode a stolen template through a public face prior, so that the
reconstruction looks like a face to a person and not only to a recognizer.

The prior is the VIGFace face autoencoder (``vigface_sdk/defaults/vigface64``, trained on LFW identities
outside View-2 folds 6–10, so on none of the benchmark's attacker or victim identities): its decoder
renders a 64×64 face from an identity prototype in the fr128 space and an 8×8×4 latent that carries
pose, light and background. The attacker

1. learns a map *stored template → fr128 prototype* on his own faces (he protects them with the SDK —
   with a key of his own for keyed schemes — and embeds them with the public fr128 recognizer):
   ridge regression or a small MLP with a cosine loss, whichever is better on his held-out identities;
2. renders every stolen template with the autoencoder's decoder from the predicted prototype and the
   *mean latent* of his own faces (a frontal, evenly lit average face: the prior; the template says
   nothing reliable about pose or light).

3. optionally (:meth:`FacePriorAttacker.search`, the *matcher search*) refines each render by gradient ascent
   on the deployment's own match score: the cosine between the stored template and the recognizer's embedding
   of the render, through the prior's decoder and the recognizer's torch graph. A thief who holds the
   matcher's secrets can compute that score, so any face the deployment would accept as the victim is within
   his reach; he needs no SDK output and trains nothing.

Reconstructions are scored like the decoders' (type I by the protected recognizer, type II and
re-identification by the evaluator). Caveat stated in the results: the autoencoder was trained with an
identity loss through fr128, so when fr128 is the *evaluator* (the fr512 benchmark) its type II is not
independent of the attacker's prior; the fr512 type I then is the independent figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecore.embeddings import l2_normalize
from facecore.errors import InvalidInputError
from facecore.metrics import cosine_scores

from ..models.decoders import PriorShadow
from .denoise import SubspaceDenoiser
from .privacy import images_to_uint8



def load_face_prior(path: str | Path | None = None):
    """The VIGFace :class:`~vigface_sdk.models.autoencoder.FaceAutoencoder` (checksums verified)."""
    from vigface_sdk.models.autoencoder import FaceAutoencoder
    from vigface_sdk.pipelines.pipeline import DEFAULT_PIPELINE

    return FaceAutoencoder.from_pretrained(Path(path) if path else DEFAULT_PIPELINE / "autoencoder").eval().requires_grad_(False)



def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosine_scores(a, b).mean())


class _Mlp(nn.Module):
    def __init__(self, d_in: int, d_out: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, x):
        return self.net(x)


def _fit_mlp(x: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray, seed: int, max_epochs: int = 300,
             patience: int = 15) -> tuple[_Mlp, float, int]:
    torch.manual_seed(seed)
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    xt = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    yt = torch.from_numpy(l2_normalize(y).astype(np.float32))
    net = _Mlp(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    best, best_state, best_epoch, since = -2.0, None, 0, 0
    g = torch.Generator().manual_seed(seed)
    tr_t = torch.from_numpy(tr)
    for epoch in range(max_epochs):
        net.train()
        perm = tr_t[torch.randperm(len(tr_t), generator=g)]
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = (1 - F.cosine_similarity(net(xt[idx]), yt[idx], dim=1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            cos = F.cosine_similarity(net(xt[va]), yt[va], dim=1).mean().item()
        if cos > best + 1e-4:
            best, best_epoch, since = cos, epoch + 1, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since += 1
            if since >= patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    net.register_buffer("mu", torch.from_numpy(mu.astype(np.float32)))
    net.register_buffer("sd", torch.from_numpy(sd.astype(np.float32)))
    return net, best, best_epoch


@dataclass
class FacePriorAttacker:
    """A fitted template → prototype map, the prior latent and the autoencoder; :meth:`reconstruct` renders faces."""

    renderer: PriorShadow  # the autoencoder's decoder at the mean latent of the attacker's faces
    kind: str  # "ridge" or "mlp"
    ridge: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (mean_in, W, mean_out)
    mlp: _Mlp | None = None
    info: dict | None = None
    denoiser: SubspaceDenoiser | None = None  # applied to every template before the map

    @classmethod
    def fit(cls, templates: np.ndarray, prototypes: np.ndarray, images: np.ndarray, labels: np.ndarray,
            autoencoder: torch.nn.Module | None = None, val_fraction: float = 0.1, seed: int = 0,
            denoiser: SubspaceDenoiser | None = None) -> "FacePriorAttacker":
        """``templates``: the scheme's output for the attacker's faces (decoder inputs, one row per face);
        ``prototypes``: the fr128 embeddings of the same faces; ``images``: the faces, uint8 RGB at the
        prior's size; ``labels``: identities, for a held-out split by identity; ``denoiser``: a projection
        applied to every template (his and the stolen ones) before the map."""
        from ..training.reconstruction import split_identities

        x = np.asarray(templates if denoiser is None else denoiser(templates), np.float64)
        y = np.asarray(prototypes, np.float64)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) != len(images) or len(x) != len(labels):
            raise InvalidInputError("templates, prototypes, images and labels need one row per attacker face")
        ae = autoencoder if autoencoder is not None else load_face_prior()
        if y.shape[1] != ae.cond_dim or images.shape[1] != ae.image_size:
            raise InvalidInputError(f"the prior takes {ae.cond_dim}-d prototypes and {ae.image_size} px faces, got "
                                    f"{y.shape[1]}-d and {images.shape[1]} px")
        tr, va = (t.numpy() for t in split_identities(labels, val_fraction, seed))
        yu = l2_normalize(y)
        # ridge on centred rows, regularisation chosen on the held-out identities
        mx, my = x[tr].mean(0), yu[tr].mean(0)
        a, b = x[tr] - mx, yu[tr] - my
        best_ridge = None
        for lam in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
            w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]) * np.mean(a * a), a.T @ b)
            cos = mean_cosine((x[va] - mx) @ w + my, yu[va])
            if best_ridge is None or cos > best_ridge[0]:
                best_ridge = (cos, lam, w)
        net, mlp_cos, mlp_epochs = _fit_mlp(x, yu, tr, va, seed)
        kind = "mlp" if mlp_cos > best_ridge[0] else "ridge"
        info = {"map": kind, **({"denoise": denoiser.info} if denoiser else {}),
                "val_cosine_ridge": round(best_ridge[0], 4), "ridge_lambda": best_ridge[1],
                "val_cosine_mlp": round(mlp_cos, 4), "mlp_epochs": mlp_epochs, "train_faces": int(len(tr)),
                "val_faces": int(len(va)), "latent": "mean over the attacker's faces",
                "mlp_params": int(sum(p.numel() for p in net.parameters())),
                "prior_params": int(sum(p.numel() for p in ae.parameters()))}
        renderer = PriorShadow(ae, torch.from_numpy(np.ascontiguousarray(images)))
        return cls(renderer, kind, (mx, best_ridge[2], my), net, info, denoiser)

    def prototypes(self, templates: np.ndarray) -> np.ndarray:
        """Predicted fr128 prototypes (unit rows) of stolen templates."""
        x = np.asarray(templates if self.denoiser is None else self.denoiser(templates), np.float64)
        if self.kind == "mlp":
            with torch.no_grad():
                t = torch.from_numpy(x.astype(np.float32))
                out = self.mlp((t - self.mlp.mu) / self.mlp.sd).numpy().astype(np.float64)
        else:
            mx, w, my = self.ridge
            out = (x - mx) @ w + my
        return l2_normalize(out)

    def search(self, templates: np.ndarray, recognizer: nn.Module, steps: int = 40,
               probe: Callable[[torch.Tensor], torch.Tensor] | None = None, lr: float = 0.02, jitter: int = 3,
               batch: int = 64, seed: int = 0) -> np.ndarray:
        """Matcher search: renders whose embedding by ``recognizer`` best matches each template, uint8 RGB.

        Starts from the map's prototype (:meth:`prototypes`) at the mean latent and follows the gradient of
        ``cos(probe(recognizer(render)), template)`` for ``steps`` Adam steps on the prototype. ``recognizer`` is
        a differentiable recognizer (``Recognizer.to_torch()``) of the deployment; ``probe`` (torch → torch, default
        none) is the deployment's probe preparation, known to a thief who holds its key. Every step renders with a
        random horizontal flip and a shift of up to ``jitter`` px, so the prototype must match as a face and not as
        a pattern fitted to one view of one recognizer's input (the usual defence against adversarial solutions).
        Hand-written because no library we use inverts an embedding through a conditional decoder.
        """
        t = np.asarray(templates)
        if t.ndim != 2 or not len(t) or not np.issubdtype(t.dtype, np.number) or not np.isfinite(t).all():
            raise InvalidInputError(f"templates must be a non-empty finite (N, d) array, got {t.dtype} {t.shape}")
        if steps < 1 or lr <= 0 or jitter < 0 or batch < 1:
            raise InvalidInputError(f"need steps >= 1, lr > 0, jitter >= 0 and batch >= 1, got {steps}, {lr}, {jitter}, {batch}")
        if t.shape[1] != len(self.ridge[0]):
            raise InvalidInputError(f"this attacker's map takes {len(self.ridge[0])}-d templates, got {t.shape[1]}-d")
        probe = probe or (lambda e: e)
        with torch.no_grad():
            dim = probe(recognizer(self.renderer(torch.from_numpy(self.prototypes(t[:1]).astype(np.float32))))).shape[1]
        if dim != t.shape[1]:
            raise InvalidInputError(f"the recognizer's prepared probes are {dim}-d, the templates {t.shape[1]}-d: "
                                    "search with the recognizer the templates came from")
        g = torch.Generator().manual_seed(seed)
        target = F.normalize(torch.from_numpy(t.astype(np.float32)), dim=1)
        start = torch.from_numpy(self.prototypes(t).astype(np.float32))
        out = []
        for i in range(0, len(t), batch):
            u = start[i:i + batch].clone().requires_grad_(True)
            opt = torch.optim.Adam([u], lr=lr)
            for _ in range(steps):
                img = self.renderer(F.normalize(u, dim=1))
                if torch.rand((), generator=g) < 0.5:
                    img = img.flip(-1)
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
                img = torch.roll(img, (dy, dx), (2, 3))
                loss = -F.cosine_similarity(probe(recognizer(img)), target[i:i + batch], dim=1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                out.append(images_to_uint8(self.renderer(F.normalize(u, dim=1))))
        return np.concatenate(out)

    @torch.no_grad()
    def reconstruct(self, templates: np.ndarray, batch: int = 128) -> np.ndarray:
        """Faces rendered by the prior, uint8 RGB ``(N, S, S, 3)``."""
        protos = torch.from_numpy(self.prototypes(templates).astype(np.float32))
        out = []
        for i in range(0, len(protos), batch):
            p = protos[i:i + batch]
            out.append(images_to_uint8(self.renderer(p)))
        return np.concatenate(out)
