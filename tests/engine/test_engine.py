"""The architecture seam: one registry, and `train.engine` picking hand-derived gradients only
where an architecture declares them (autograd otherwise, a config error when forced)."""

import pytest
import torch

from broken_latents.cli import main
from broken_latents.config.schema import (
    ConfigError,
    ExperimentConfig,
    SAEConfig,
    TrainConfig,
    WorldConfig,
)
from broken_latents.config.toml_io import from_dict
from broken_latents.engine.fastpath import Architecture
from broken_latents.saes import ARCHITECTURES, TiedSAE, build_sae, register
from broken_latents.training.loop import choose_engine, train


class PlainTied(TiedSAE):
    """A new architecture with the tied math but no gradients of its own derived: it must train
    by autograd, never with the tied formulas it would inherit."""

    architecture = "plain-tied"
    hand_gradients = None


@pytest.fixture
def plain_tied():
    register(PlainTied)
    yield PlainTied
    del ARCHITECTURES[PlainTied.architecture]


def _config(architecture="tied", engine="auto", activation="relu") -> ExperimentConfig:
    return ExperimentConfig(
        name="t",
        world=WorldConfig(features=4, dim=6),
        train=TrainConfig(samples=4_096, batch_size=256, seeds=1, engine=engine, eval_samples=1000),
        sae=[SAEConfig(label="s", architecture=architecture, latents=3, activation=activation)],
    )


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="registered twice"):
        register(
            type("AnotherTied", (TiedSAE,), {"architecture": "tied", "hand_gradients": "tied"})
        )
    assert ARCHITECTURES["tied"] is TiedSAE


def test_an_architecture_states_its_gradients_itself():
    """A subclass that does not say otherwise would inherit its parent's hand gradients."""
    with pytest.raises(TypeError, match="hand_gradients"):
        register(type("Inherits", (TiedSAE,), {"architecture": "inherits"}))
    assert "inherits" not in ARCHITECTURES


@pytest.mark.parametrize("device, engine", [("cpu", "compiled"), ("cuda", "arrays")])
def test_auto_takes_the_hand_gradients_where_declared(device, engine):
    assert choose_engine(_config(), device).name == engine


def test_fast_in_old_config_files_means_auto():
    config = from_dict(ExperimentConfig, {"name": "t", "train": {"engine": "fast"}})
    assert config.train.engine == "auto"


def test_compiled_on_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        choose_engine(_config(engine="compiled"), "cuda")
    assert err.value.field == "train.engine"


def test_a_registered_architecture_is_a_valid_config_value(plain_tied):
    assert from_dict(SAEConfig, {"architecture": "plain-tied"}).architecture == "plain-tied"
    with pytest.raises(ConfigError, match="'tied', 'untied', 'plain-tied'"):
        from_dict(SAEConfig, {"architecture": "plain"})


def test_auto_trains_an_architecture_without_hand_gradients_by_autograd(plain_tied):
    assert choose_engine(_config("plain-tied"), "cpu").name == "autograd"
    result = train(_config("plain-tied"), progress=False)
    assert torch.isfinite(result.stacks[0].sae.W_dec_SKD).all()
    with pytest.raises(ValueError, match="no hand-derived gradients"):
        Architecture.of(build_sae(_config("plain-tied").sae[0], 1, 6, [0], "random"))


@pytest.mark.parametrize("engine", ["compiled", "arrays"])
def test_forcing_hand_gradients_without_them_is_a_config_error(plain_tied, engine):
    with pytest.raises(ConfigError) as err:
        choose_engine(_config("plain-tied", engine=engine), "cpu")
    assert err.value.field == "train.engine" and "'s'" in str(err.value)


def test_cli_exits_2_naming_train_engine(plain_tied, tmp_path, capsys):
    (tmp_path / "x.toml").write_text(
        'name = "x"\n[train]\nengine = "compiled"\n'
        '[[sae]]\nlabel = "s"\narchitecture = "plain-tied"\n'
    )
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "x.toml"), "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "train.engine" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# -- the fields an architecture owns -------------------------------------------------------

UNTIED = """
name = "x"
[world]
features = 4
dim = 6
[[sae]]
label = "u"
architecture = "untied"
latents = 3
encoder_init = "random"
l1_decoder_norm = false
"""


def test_owned_fields_sit_flat_in_the_table_and_round_trip(tmp_path):
    from broken_latents.config.toml_io import dump_toml, load_toml

    path = tmp_path / "c.toml"
    path.write_text(UNTIED)
    config = load_toml(path)
    assert config.sae[0].options == ARCHITECTURES["untied"].Options(
        l1_decoder_norm=False, encoder_init="random"
    )
    text = dump_toml(config)
    assert (
        'encoder_init = "random"' in text
        and "l1_decoder_norm = false" in text
        and "options" not in text
    )
    path.write_text(text)
    assert load_toml(path) == config
    # Defaults are left out of the file: a reader sees only what was chosen.
    plain = dump_toml(ExperimentConfig(name="p", sae=[SAEConfig(architecture="untied")]))
    assert "encoder_init" not in plain and "l1_decoder_norm" not in plain


def test_a_field_another_architecture_owns_is_refused_by_name():
    data = {"name": "x", "sae": [{"label": "t", "architecture": "tied", "encoder_init": "random"}]}
    with pytest.raises(ConfigError) as err:
        from_dict(ExperimentConfig, data)
    assert err.value.field == "sae.t.encoder_init"
    assert "architecture 'untied' only" in str(err.value)
    data["sae"][0]["encoder_init"] = 3
    data["sae"][0]["architecture"] = "untied"
    with pytest.raises(ConfigError, match="must be one of 'transpose', 'random'") as err:
        from_dict(ExperimentConfig, data)
    assert err.value.field == "sae.t.encoder_init"


def test_switching_architecture_by_set_keeps_no_default_of_the_old_one():
    from broken_latents.config.overrides import apply_overrides

    config = ExperimentConfig(name="x", sae=[SAEConfig(label="s", architecture="untied")])
    tied = apply_overrides(config, ["sae.s.architecture=tied"]).sae[0]
    assert (
        tied.options == ARCHITECTURES["tied"].Options()
    )  # the plain L1 of tied, not untied's weighted one
    chosen = apply_overrides(config, ["sae.s.encoder_init=random"])
    with pytest.raises(ConfigError, match="architecture 'untied' only"):
        apply_overrides(chosen, ["sae.s.architecture=tied"])


@pytest.mark.parametrize("encoder_init", ["transpose", "random"])
def test_untied_encoder_init(encoder_init):
    options = ARCHITECTURES["untied"].Options(encoder_init=encoder_init)
    config = SAEConfig(label="u", architecture="untied", latents=4, options=options)
    sae = build_sae(config, n_saes=2, dim=6, seeds=[0, 1], init="random")
    transposed = sae.W_dec_SKD.detach().transpose(1, 2)
    assert torch.equal(sae.W_enc_SDK.detach(), transposed) == (encoder_init == "transpose")
    torch.testing.assert_close(sae.W_enc_SDK.detach().norm(dim=1), torch.ones(2, 4))
    again = build_sae(config, n_saes=2, dim=6, seeds=[0, 1], init="random")
    assert torch.equal(again.W_enc_SDK, sae.W_enc_SDK)  # seeded, like the decoder


def test_l1_decoder_norm_weights_the_l1_term():
    options = ARCHITECTURES["tied"].Options(l1_decoder_norm=True)
    sae = build_sae(
        SAEConfig(label="t", latents=3, options=options), n_saes=1, dim=6, seeds=[0], init="random"
    )
    with torch.no_grad():
        sae.W_dec_SKD.mul_(torch.tensor([1.0, 2.0, 3.0])[None, :, None])
    torch.testing.assert_close(sae.l1_weights_SK(), torch.tensor([[1.0, 2.0, 3.0]]))


def test_an_architecture_declares_the_fields_it_owns():
    with pytest.raises(TypeError, match="Options"):
        register(
            type(
                "NoOptions",
                (torch.nn.Module,),
                {"architecture": "no-options", "hand_gradients": None},
            )
        )
    assert "no-options" not in ARCHITECTURES
