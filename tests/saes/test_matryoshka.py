"""Matryoshka SAEs and the TopK / BatchTopK activations: config validation, the nested loss, exactly
k active latents, the engine choice, and a tiny training whose width-1 prefix takes the feature
that costs the most to leave out."""

import pytest
import torch

from broken_latents.analysis.measure import cosine, measure
from broken_latents.config.schema import (
    ConfigError,
    ExperimentConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.config.toml_io import from_dict
from broken_latents.saes import build_sae
from broken_latents.training.loop import choose_engine, train


def _sae(architecture="tied", latents=4, n=2, dim=6, **fields):
    return build_sae(
        SAEConfig(label="x", architecture=architecture, latents=latents, **fields),
        n,
        dim,
        list(range(n)),
        "random",
    )


# -- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"matryoshka_widths": [1, 3]}, "sae.m.matryoshka_widths", "ending at latents = 5"),
        ({"matryoshka_widths": [2, 2, 5]}, "sae.m.matryoshka_widths", "strictly increasing"),
        ({"matryoshka_widths": [3, 1, 5]}, "sae.m.matryoshka_widths", "strictly increasing"),
        ({"matryoshka_widths": [0, 5]}, "sae.m.matryoshka_widths", "positive"),
        ({"matryoshka_widths": [1, 5, 6]}, "sae.m.matryoshka_widths", "ending at latents = 5"),
        ({"matryoshka_widths": []}, "sae.m.matryoshka_widths", "strictly increasing"),
        ({"activation": "topk"}, "sae.m.k", "is required"),
        ({"activation": "batchtopk"}, "sae.m.k", "is required"),
        ({"activation": "topk", "k": 0}, "sae.m.k", "[1, latents = 5]"),
        ({"activation": "batchtopk", "k": 6}, "sae.m.k", "[1, latents = 5]"),
        ({"activation": "relu", "k": 6}, "sae.m.k", "[1, latents = 5]"),
    ],
)
def test_bad_matryoshka_and_k_settings_name_the_field(fields, field, message):
    data = {"name": "x", "sae": [{"label": "m", "latents": 5, **fields}]}
    with pytest.raises(ConfigError) as err:
        from_dict(ExperimentConfig, data)
    assert err.value.field == field
    assert message in str(err.value)


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_k_beside_an_activation_without_it_is_allowed_and_said_unused(activation):
    """DESIGN's example [[sae]] sets k = 2 with activation relu ("topk / batchtopk only")."""
    config = from_dict(
        ExperimentConfig,
        {"name": "x", "sae": [{"label": "m", "latents": 5, "activation": activation, "k": 2}]},
    )
    assert config.sae[0].unused_settings() == [
        f"sae.m.k = 2 is unused: activation {activation!r} keeps every "
        "positive latent (k applies to 'topk' and 'batchtopk')"
    ]
    pre = torch.tensor([[[0.5, 1.0, 2.0, -1.0, 3.0]]]).expand(2, 1, 5)
    assert (
        _sae(latents=5, activation=activation, k=2).activate(pre).count_nonzero() == 8
    )  # all 4 positive, both SAEs
    topk = from_dict(
        ExperimentConfig, {"name": "x", "sae": [{"label": "t", "activation": "topk", "k": 2}]}
    )
    assert topk.sae[0].unused_settings() == []


def test_good_settings_parse():
    config = from_dict(
        ExperimentConfig,
        {
            "name": "x",
            "sae": [
                {
                    "label": "m",
                    "latents": 5,
                    "matryoshka_widths": [1, 5],
                    "activation": "batchtopk",
                    "k": 2,
                },
                {"label": "p", "latents": 5, "matryoshka_widths": [5]},
            ],
        },
    )
    assert config.sae[0].matryoshka_widths == [1, 5] and config.sae[0].k == 2
    assert config.sae[0].nested_widths() == [1, 5]
    assert config.sae[1].nested_widths() is None  # one width: a plain SAE, and trains as one


def test_topk_trains_by_autograd_and_refuses_hand_gradient_engines():
    config = ExperimentConfig(name="x", sae=[SAEConfig(label="t", activation="topk", k=2)])
    assert choose_engine(config, "cpu").name == "autograd"
    for engine in ("compiled", "arrays"):
        with pytest.raises(ConfigError) as err:
            choose_engine(
                ExperimentConfig(name="x", sae=config.sae, train=TrainConfig(engine=engine)), "cpu"
            )
        assert err.value.field == "train.engine"
    nested = ExperimentConfig(name="x", sae=[SAEConfig(label="m", matryoshka_widths=[1, 5])])
    assert choose_engine(nested, "cpu").name == "compiled"


# -- the nested loss ----------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["tied", "untied"])
def test_prefix_loss_sums_the_prefix_reconstructions(architecture):
    sae = _sae(architecture, latents=4, matryoshka_widths=[1, 3, 4], l1=0.1)
    with torch.no_grad():
        sae.b_dec_SD.normal_()
    x = torch.randn(2, 9, 6)
    terms, h = sae.loss_terms(x)
    assert set(terms) == {"mse", "l1", "prefix_mse"}
    W, b = sae.W_dec_SKD, sae.b_dec_SD[:, None]

    def error(w):
        return (x - (h[..., :w] @ W[:, :w] + b)).pow(2).sum(-1)

    torch.testing.assert_close(terms["mse"][1], error(4))
    torch.testing.assert_close(terms["prefix_mse"][1], error(1) + error(3))
    assert terms["prefix_mse"][0] == 1.0 and terms["l1"][0] == 0.1  # sparsity counted once
    assert set(_sae(architecture).loss_terms(x)[0]) == {"mse", "l1"}  # plain: no prefix term


# -- TopK and BatchTopK -------------------------------------------------------------------


def test_topk_keeps_exactly_k_per_sample():
    sae = _sae(latents=6, activation="topk", k=2)
    pre = torch.rand(2, 50, 6) + 0.1  # all positive, so ReLU removes none of the k largest
    h = sae.activate(pre)
    assert ((h > 0).sum(-1) == 2).all()
    largest = pre.topk(2, dim=-1).values
    torch.testing.assert_close(h.topk(2, dim=-1).values, largest)
    negative = sae.activate(-pre)  # nothing positive: ReLU'd to silence
    assert (negative == 0).all()


def test_batchtopk_keeps_exactly_k_times_batch_in_training_then_uses_its_threshold():
    sae = _sae(latents=6, activation="batchtopk", k=2)
    pre = torch.rand(2, 50, 6) + 0.1
    h = sae.activate(pre, training=True)
    assert ((h > 0).flatten(1).sum(-1) == 2 * 50).all()
    per_sample = (h > 0).sum(-1)
    assert per_sample.min() < 2 < per_sample.max()  # over the batch, not per sample
    # The first batch sets the inference threshold to the smallest activation kept.
    kept_min = torch.where(h > 0, h, torch.inf).flatten(1).amin(-1)
    torch.testing.assert_close(sae.batchtopk_threshold_S, kept_min)
    h_eval = sae.activate(pre)
    torch.testing.assert_close(h_eval, pre * (pre > kept_min[:, None, None]))
    assert torch.equal(sae.activate(pre[:, :1]), h_eval[:, :1])  # a sample alone: the same latents


@pytest.mark.slow
def test_batchtopk_and_topk_train_end_to_end():
    world = WorldConfig(features=6, dim=8, firing=0.2, magnitude={"linear": [3.0, 1.0]})
    config = ExperimentConfig(
        name="k",
        world=world,
        train=TrainConfig(samples=20_000, batch_size=256, seeds=2, eval_samples=2000),
        sae=[
            SAEConfig(label="top", latents=4, activation="topk", k=2),
            SAEConfig(
                label="batch",
                architecture="untied",
                latents=4,
                activation="batchtopk",
                k=2,
                matryoshka_widths=[2, 4],
            ),
        ],
    )
    result = train(config, progress=False)
    assert set(result.history.means()["batch"]) == {"mse", "l1", "prefix_mse"}
    assert torch.isfinite(result.stacks[1].sae.batchtopk_threshold_S).all()
    runs = {run.label: run for run in measure(result).runs}
    assert runs["top"].l0 <= 2.0
    assert len(runs["batch"].width_explained_variance) == 2


# -- a tiny training ----------------------------------------------------------------------


def _two_feature_run(widths):
    """Two independent orthogonal features; feature 0 costs 4x more to leave out (p m^2)."""
    config = ExperimentConfig(
        name="m",
        world=WorldConfig(features=2, dim=4, firing=0.3, magnitude=[3.0, 1.5]),
        train=TrainConfig(samples=300_000, batch_size=256, lr=3e-3, seeds=6, eval_samples=5000),
        sae=[SAEConfig(label="m", latents=2, l1=3e-3, matryoshka_widths=widths)],
    )
    return train(config, progress=False)


def test_matryoshka_width_one_prefix_learns_the_costlier_feature():
    result = _two_feature_run([1, 2])
    sae = result.stacks[0].sae
    for s in range(len(result.seeds)):
        cos = cosine(sae.W_dec_SKD[s].detach(), result.world.directions_ND)
        # The sign may flip: a tied latent along -f0 fires when f0 is absent and b_dec adds
        # m f0 back, which reconstructs a fixed-magnitude feature exactly (the one-latent
        # minimum DESIGN.md describes); it lands there in about half the seeds.
        assert abs(cos[0, 0]) >= 0.95, (s, cos)
    for run in measure(result).runs:
        one, both = run.width_explained_variance
        assert both == run.explained_variance
        # Feature 0 carries 0.21 * 9 / (0.21 * 9 + 0.21 * 2.25) = 80% of the variance.
        assert 0.7 < one < 0.9 < both, run.width_explained_variance


def test_plain_sae_latent_zero_takes_either_feature():
    """The control: without the prefix loss nothing puts feature 0 in latent 0."""
    result = _two_feature_run(None)
    cos = cosine(result.stacks[0].sae.W_dec_SKD[:, 0].detach(), result.world.directions_ND)[
        :, 0
    ].abs()
    assert (cos < 0.95).any()
    run = measure(result).runs[0]
    assert run.width_explained_variance == [run.explained_variance]
