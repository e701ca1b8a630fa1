"""Benchmark harness: attacks, re-identification, the quick end-to-end run, report files and CLI errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from advface_sdk.cli import main as cli
from advface_sdk.evaluation import create_method
from advface_sdk.evaluation.attacks import AttackerConfig, decoder_inputs, reidentification, score_matrix
from facecore.errors import InvalidInputError

D = 64


@pytest.fixture(scope="module")
def people():
    """40 identities on the unit sphere: one enrolled and one probe sample each (cos to centre ≈ 0.85)."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = lambda: rng.standard_normal((40, D)) * (0.6 / math.sqrt(D))  # noqa: E731
    return (centres + noise()).astype(np.float32), (centres + noise()).astype(np.float32), np.arange(40) + 100


def test_decoder_inputs_maps_bits_to_signs():
    bits = np.array([[True, False, True]])
    np.testing.assert_array_equal(decoder_inputs(bits), [[1.0, -1.0, 1.0]])
    assert decoder_inputs(np.ones((2, 3), np.float64)).dtype == np.float32


def test_attacker_config_budget_and_validation():
    cfg = AttackerConfig(pixel_epochs=5, id_epochs=2, adaptive_pixel_epochs=1, adaptive_id_epochs=1)
    d = cfg.decoder_config(adaptive=False)
    assert (d.epochs, d.id_start_epoch, d.arch, d.seed) == (7, 5, "deconv", 1)
    assert cfg.decoder_config(adaptive=True).epochs == 2
    assert cfg.budget(True).startswith("warm start, 1 px epochs, then px + id epochs until")
    fixed = AttackerConfig(adaptive_pixel_epochs=1, adaptive_id_epochs=1, adaptive_max_epochs=0)
    assert not fixed.converged and fixed.budget(True) == "1 px + 1 id epochs (warm start)"
    with pytest.raises(InvalidInputError):
        AttackerConfig(adaptive_pixel_epochs=3, adaptive_max_epochs=3)  # no epoch left to converge in
    assert AttackerConfig(adaptive_id_epochs=0).decoder_config(adaptive=True).id_weight == 0.0
    with pytest.raises(InvalidInputError):
        AttackerConfig(id_epochs=-1)
    with pytest.raises(InvalidInputError):
        AttackerConfig(pixel_epochs=0, id_epochs=0)


@pytest.mark.parametrize("name", ["none", "gaussian", "biohashing", "polyprotect"])
def test_reidentification_finds_people_through_the_method(people, name):
    enrolled, probe, users = people
    method = create_method(name, seed=1).fit(enrolled)
    stolen = method.protect_gallery(enrolled, users)
    res = reidentification(score_matrix(method, stolen, users, probe), users, users)
    assert res["rank1"] >= 0.9 and res["templates"] == res["candidates"] == 40
    assert res["n_impostors"] == 40 * 39


def test_reidentification_is_chance_for_unrelated_templates(people):
    enrolled, probe, users = people
    rng = np.random.default_rng(0)
    stolen = rng.standard_normal(enrolled.shape).astype(np.float32)  # templates carrying no identity
    method = create_method("none").fit(enrolled)
    res = reidentification(score_matrix(method, stolen, users, probe), users, users)
    assert res["rank1"] <= 0.2
    with pytest.raises(InvalidInputError, match="candidate of the same person"):
        reidentification(np.zeros((2, 2)), np.array([1, 2]), np.array([3, 4]))


def test_keyed_scores_use_the_stolen_templates_key(people):
    enrolled, probe, users = people
    method = create_method("biohashing", seed=2).fit(enrolled)
    stolen = method.protect_gallery(enrolled, users)
    sm = score_matrix(method, stolen, users, probe)
    own = method.match(method.transform_probe(probe[:1], users[:1]), stolen[:1])
    assert sm[0, 0] == pytest.approx(own[0])


def test_cli_rejects_bad_options():
    runner = CliRunner()
    res = runner.invoke(cli, ["benchmark", "--attacker-epochs", "ten"])
    assert res.exit_code == 2 and "PIXEL+IDENTITY" in res.output
    res = runner.invoke(cli, ["benchmark", "--methods", "none,rot13"])
    assert res.exit_code == 2 and "unknown methods ['rot13']" in res.output


@pytest.mark.data
def test_quick_benchmark_end_to_end(shared, tmp_path):
    """A CI-sized run on real LFW and recognizers: structure, utility, storage, embedding attack, report files."""
    from advface_sdk.artifact import default_artifacts
    from advface_sdk.evaluation.harness import BenchmarkConfig, config_from_dict, run_benchmark
    from advface_sdk.evaluation.report import write_report

    methods = ("none", "gaussian", "biohashing") + (("advface", "advface-key", "advface-salted")
                                                    if "fr128" in default_artifacts() else ())
    cfg = BenchmarkConfig.quick_preset(recognizer="fr128", methods=methods, cache_dir=str(tmp_path / "cache"), progress=False)
    result, pictures = run_benchmark(cfg)
    rows = result["methods"]
    assert list(rows) == list(methods)
    raw = rows["none"]
    assert raw["utility"]["accuracy"] > 0.97  # the real recognizer on LFW folds 6-10
    assert raw["attack"]["embedding"]["rank1"] > 0.9  # raw templates re-identify their owners
    assert raw["storage"] == {"bytes_per_template": 512, "values": 128, "expansion_vs_float32": 1.0}
    assert rows["biohashing"]["storage"]["bytes_per_template"] == 16
    assert rows["biohashing"]["attack"]["non_adaptive"] is None  # bit codes are not embeddings
    assert rows["biohashing"]["attack"]["non_adaptive_denoised"] is None
    assert 0 < result["attackers"]["denoiser"]["k"] < 128 and result["attackers"]["denoiser"]["variance_kept"] >= 0.9
    assert 0 <= raw["attack"]["non_adaptive_denoised"]["type2"] <= 1
    for name, row in rows.items():
        assert row["cost"]["protect_us"] > 0 and row["cost"]["match_us"] > 0
        adaptive = row["attack"]["adaptive"]
        assert adaptive is not None and 0 <= adaptive["type2"] <= 1 and adaptive["victims"] == 16
        assert 0 < adaptive["ssim"] < 1
    if "advface" in rows:
        assert rows["advface"]["utility"]["accuracy"] > raw["utility"]["accuracy"] - 0.02
        train = rows["advface"]["attack"]["adaptive"]["train"]
        assert train["budget"].startswith("warm start, 1 px epochs") and 1 <= train["best_epoch"] <= train["epochs"] <= 3
        assert [h["epoch"] for h in train["curve"]] == list(range(train["epochs"] + 1))  # epoch 0 = before training
        assert all(0 <= h["val_type2"] <= 1 and h["val_loss"] > 0 for h in train["curve"])
        for key in ("face_prior", "face_prior_key_stolen"):
            fp = rows["advface-key"]["attack"][key]
            assert 0 <= fp["type2"] <= 1 and 0 <= fp["reid_rank1"] <= 1 and fp["victims"] == 16
        assert rows["advface"]["attack"]["face_prior"]["attacker"]["map"] in ("ridge", "mlp")
        assert "advface-key (b) face prior" in pictures and pictures["advface (face prior)"].shape == (4, 64, 64, 3)
        keyed, plain = rows["advface-key"], rows["advface"]
        assert keyed["utility"]["accuracy"] == plain["utility"]["accuracy"]  # a rotation keeps every cosine
        assert keyed["threats"]["reid_key_secret"] < 0.25 < plain["threats"]["reid_key_secret"]
        assert keyed["attack"]["embedding"]["rank1"] == plain["attack"]["embedding"]["rank1"]  # key stolen
        assert keyed["attack"]["non_adaptive_key_stolen"] == plain["attack"]["non_adaptive"]
        assert keyed["attack"]["non_adaptive_denoised_key_stolen"] == plain["attack"]["non_adaptive_denoised"]
        assert 0 <= keyed["threats"]["known_plaintext_100"]["rank1"] <= 1 and keyed["threats"]["alignment"]["type2"] is not None
        found = keyed["threats"]["alignment"]["attackers"]  # (c): every pair-free attacker, the row keeps the strongest
        assert {"Gromov-Wasserstein (clean photos)", "Gromov-Wasserstein (photos under the public SDK)"} <= set(found)
        assert keyed["threats"]["alignment"]["rank1"] == max(f["rank1"] for f in found.values())
        salted = rows["advface-salted"]["attack"]  # (b) with the key but not the users' salts
        assert salted["embedding"]["rank1"] > 0.9 > 0.25 > salted["embedding_key_stolen"]["rank1"]
        assert salted["adaptive_key_stolen"] == {k: v for k, v in salted["adaptive"].items() if k != "train"}
        assert salted["non_adaptive_key_stolen"]["victims"] == 16
        assert salted["face_prior_key_stolen"] == {k: v for k, v in salted["face_prior"].items() if k != "attacker"}
    assert 0 <= result["random_face_type2"] <= 1
    assert {p["method"] for p in result["curve"]} >= {"gaussian"}
    assert pictures["true"].shape == (4, 64, 64, 3) and "none (non-adaptive)" in pictures
    assert config_from_dict(json.loads(json.dumps(result["config"]))) == cfg

    paths = write_report({"command": "pytest", **result}, pictures, tmp_path, "bench")
    md = paths["md"].read_text()
    assert "| none |" in md and "| biohashing |" in md and "re-id rank-1" in md and "## Threat matrix" in md
    assert json.loads(paths["json"].read_text())["methods"]["none"]["utility"]["accuracy"] == raw["utility"]["accuracy"]
    assert "(b) non-adaptive, PCA-projected" in md and "(e) face prior, key secret" in md and "### Linking a stolen template" in md
    for key in ("curve", "roc", "grid") + (("adaptive_png",) if "advface" in rows else ()):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"

    # attackers are cached by configuration: a rerun loads them and reproduces the attack numbers
    again, _ = run_benchmark(BenchmarkConfig.quick_preset(recognizer="fr128", methods=("none",), curve_budgets=(),
                                                          cache_dir=str(tmp_path / "cache"), progress=False))
    assert again["attackers"]["non_adaptive"]["cached"] is True
    assert again["methods"]["none"]["attack"]["non_adaptive"] == raw["attack"]["non_adaptive"]


def test_results_name_no_machine_paths(tmp_path, monkeypatch):
    from advface_sdk.evaluation import report

    monkeypatch.chdir(tmp_path)
    project = Path(report.__file__).resolve().parents[2]
    out = report.portable({"artifact": str(project / "advface_sdk" / "defaults" / "fr128"),
                           "runs": [str(tmp_path / "runs" / "x"), "fr128"], "other": "/opt/elsewhere", "n": 3})
    assert out == {"artifact": "advface_sdk/defaults/fr128", "runs": ["runs/x", "fr128"], "other": "/opt/elsewhere", "n": 3}
