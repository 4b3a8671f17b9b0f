"""The architecture seam: one registry, and `train.engine` picking hand-derived gradients only
where an architecture declares them (autograd otherwise, a config error when forced)."""

import pytest
import torch

from broken_latents.cli import main
from broken_latents.config import ConfigError, ExperimentConfig, SAEConfig, TrainConfig, WorldConfig, from_dict
from broken_latents.engine.fastpath import Architecture
from broken_latents.saes import ARCHITECTURES, TiedSAE, build_sae, register
from broken_latents.train import choose_engine, train


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
    return ExperimentConfig(name="t", world=WorldConfig(features=4, dim=6),
                            train=TrainConfig(samples=4_096, batch_size=256, seeds=1, engine=engine, eval_samples=1000),
                            sae=[SAEConfig(label="s", architecture=architecture, latents=3, activation=activation)])


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="registered twice"):
        register(type("AnotherTied", (TiedSAE,), {"architecture": "tied", "hand_gradients": "tied"}))
    assert ARCHITECTURES["tied"] is TiedSAE


def test_an_architecture_states_its_gradients_itself():
    """A subclass that does not say otherwise would inherit its parent's hand gradients."""
    with pytest.raises(TypeError, match="hand_gradients"):
        register(type("Inherits", (TiedSAE,), {"architecture": "inherits"}))
    assert "inherits" not in ARCHITECTURES


@pytest.mark.parametrize("device, engine", [("cpu", "compiled"), ("cuda", "arrays")])
def test_auto_takes_the_hand_gradients_where_declared(device, engine):
    assert choose_engine(_config(), device) == engine


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
    assert choose_engine(_config("plain-tied"), "cpu") == "autograd"
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
    (tmp_path / "x.toml").write_text('name = "x"\n[train]\nengine = "compiled"\n'
                                     '[[sae]]\nlabel = "s"\narchitecture = "plain-tied"\n')
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "x.toml"), "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "train.engine" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
