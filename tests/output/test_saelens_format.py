"""SAELens folders: what we write has the documented cfg.json, reads back the same, and (where
sae-lens is installed) loads in SAELens and encodes as our numpy SAE does."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from broken_latents.config.schema import ConfigError
from broken_latents.output.saelens_format import load_sae, write_saelens

D, K = 6, 4


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(D, K)).astype(np.float32),
        "W_dec": rng.normal(size=(K, D)).astype(np.float32),
        "b_enc": rng.normal(size=K).astype(np.float32) * 0.1,
        "b_dec": rng.normal(size=D).astype(np.float32) * 0.1,
    }


def _x(n: int = 64) -> np.ndarray:
    return np.random.default_rng(9).normal(size=(n, D)).astype(np.float32)


def test_cfg_json_has_the_documented_fields(tmp_path):
    folder = write_saelens(
        tmp_path / "sae", _weights(), "relu", metadata={"label": "untied", "seed": 3}
    )
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "standard"
    assert (cfg["d_in"], cfg["d_sae"]) == (D, K)
    assert cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["reshape_activations"] == "none"
    assert (
        cfg["metadata"]["sae_lens_version"] >= "6"
    )  # SAELens' loader reads the 6.x layout only with it
    assert (
        cfg["metadata"]["tied"] is False
        and cfg["metadata"]["label"] == "untied"
        and cfg["metadata"]["seed"] == 3
    )
    assert (folder / "sae_weights.safetensors").is_file()


def test_round_trip_standard_and_encode(tmp_path):
    weights = _weights()
    sae = load_sae(write_saelens(tmp_path / "sae", weights, "relu"))
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        np.testing.assert_array_equal(getattr(sae, name), weights[name])
    assert sae.architecture == "standard" and sae.threshold is None
    x = _x()
    expected = np.maximum((x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"], 0)
    np.testing.assert_allclose(sae.encode(x), expected, rtol=1e-5, atol=1e-6)
    assert (sae.encode(x) == 0).any() and (sae.encode(x) > 0).any()


def test_round_trip_jumprelu_keeps_the_threshold(tmp_path):
    weights = {**_weights(), "threshold": np.full(K, 0.5, dtype=np.float32)}
    folder = write_saelens(tmp_path / "sae", weights, "jumprelu")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "jumprelu"
    sae = load_sae(folder)
    np.testing.assert_array_equal(sae.threshold, weights["threshold"])
    x = _x()
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    np.testing.assert_allclose(sae.encode(x), pre * (pre > 0.5), rtol=1e-5, atol=1e-6)


def test_tied_sae_is_written_with_its_encoder_and_says_so(tmp_path):
    weights = _weights()
    folder = write_saelens(
        tmp_path / "sae", {**weights, "W_enc": np.zeros((D, K))}, "relu", tied=True
    )
    assert json.loads((folder / "cfg.json").read_text())["metadata"]["tied"] is True
    sae = load_sae(folder)
    np.testing.assert_array_equal(sae.W_enc, weights["W_dec"].T)
    np.testing.assert_array_equal(sae.b_enc, np.zeros(K))


def test_tied_sae_with_one_latent_is_written(tmp_path):
    """W_dec [1, D] transposed is contiguous already: safetensors refused the shared memory."""
    W_dec = np.random.default_rng(0).normal(size=(1, D)).astype(np.float32)
    folder = write_saelens(
        tmp_path / "sae", {"W_dec": W_dec, "b_dec": np.zeros(D, np.float32)}, "relu", tied=True
    )
    np.testing.assert_array_equal(load_sae(folder).W_enc, W_dec.T)


def test_run_weights_file_loads(tmp_path):
    weights = _weights()
    save_file(weights, str(tmp_path / "tied-seed0.safetensors"))
    sae = load_sae(tmp_path / "tied-seed0.safetensors")
    assert sae.architecture == "standard"
    np.testing.assert_array_equal(sae.W_dec, weights["W_dec"])
    save_file(
        {**weights, "threshold": np.ones(K, np.float32)}, str(tmp_path / "j-seed0.safetensors")
    )
    assert load_sae(tmp_path / "j-seed0.safetensors").architecture == "jumprelu"


def test_topk_folder_keeps_k_largest(tmp_path):
    folder = write_saelens(tmp_path / "sae", _weights(), "relu")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "topk", "k": 2}))
    h = load_sae(folder).encode(_x())
    assert ((h > 0).sum(-1) <= 2).all() and ((h > 0).sum(-1) == 2).any()


@pytest.mark.parametrize(
    "change, problem",
    [
        (
            lambda f: (f / "cfg.json").write_text(
                json.dumps({**json.loads((f / "cfg.json").read_text()), "architecture": "gated"})
            ),
            "architecture 'gated'",
        ),
        (lambda f: (f / "cfg.json").unlink(), "cfg.json is missing"),
        (lambda f: (f / "sae_weights.safetensors").unlink(), "sae_weights.safetensors is missing"),
        (
            lambda f: (f / "cfg.json").write_text(
                json.dumps({**json.loads((f / "cfg.json").read_text()), "d_in": 99})
            ),
            "d_in is 99",
        ),
    ],
)
def test_bad_folders_name_the_problem(tmp_path, change, problem):
    folder = write_saelens(tmp_path / "sae", _weights(), "relu")
    change(folder)
    with pytest.raises(ConfigError, match=problem):
        load_sae(folder)


def test_missing_path_names_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_sae(tmp_path / "nope")


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
@pytest.mark.parametrize("tied", [False, True])
def test_sae_lens_loads_it_and_encodes_the_same(tmp_path, activation, tied):
    sae_lens = pytest.importorskip("sae_lens")
    import torch

    weights = {**_weights(), "threshold": np.full(K, 0.3, dtype=np.float32)}
    folder = write_saelens(tmp_path / "sae", weights, activation, tied=tied)
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    assert theirs.cfg.architecture() == {"relu": "standard", "jumprelu": "jumprelu"}[activation]
    assert theirs.cfg.metadata.tied is tied
    x = _x()
    with torch.no_grad():
        their_h = theirs.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load_sae(folder).encode(x), their_h, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_run_writes_each_sae_as_a_saelens_folder(tmp_path):
    from broken_latents.cli import main

    (tmp_path / "tiny.toml").write_text("""
name = "tiny-saelens"
[world]
features = 3
dim = 4
firing = 0.3
magnitude = 1.0
[train]
samples = 8_192
seeds = 1
eval_samples = 2_000
engine = "autograd"  # no kernel to compile: this test is about the files
[[sae]]
label = "tied"
architecture = "tied"
latents = 3
[[sae]]
label = "jump"
architecture = "untied"
latents = 2
activation = "jumprelu"
""")
    main(["run", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "run")])
    weights = tmp_path / "run" / "weights"
    for label, architecture, tied in (("tied", "standard", True), ("jump", "jumprelu", False)):
        cfg = json.loads((weights / f"{label}-seed0" / "cfg.json").read_text())
        assert (cfg["architecture"], cfg["metadata"]["tied"], cfg["metadata"]["label"]) == (
            architecture,
            tied,
            label,
        )
        ours, theirs = (
            load_sae(weights / f"{label}-seed0.safetensors"),
            load_sae(weights / f"{label}-seed0"),
        )
        x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
        np.testing.assert_allclose(ours.encode(x), theirs.encode(x), atol=1e-6)
        if tied:
            np.testing.assert_array_equal(theirs.W_enc, theirs.W_dec.T)
