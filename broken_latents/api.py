"""The Python API for notebooks: load a run directory back, or train and analyse in memory.

    import broken_latents as bl
    run = bl.load_run("runs/recap-absorption")
    sae = run.saes["untied"][0]
    h = sae.encode(run.world.directions)      # each true feature alone, at magnitude 1
    run.metrics.runs[0].absorption            # typed metrics.json

`broken_latents/__init__.py` re-exports these names lazily, so `import broken_latents` stays
light (torch and numba load on first use)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config.schema import ConfigError, ExperimentConfig, SAEConfig
from .config.toml_io import load_toml
from .analysis.metrics import Metrics, read_metrics
from .saes.activations import activation
from .world.model import World
from .training.history import TrainingHistory

# -- one trained SAE --------------------------------------------------------------------------


@dataclass
class SAE:
    """One trained SAE (one label, one seed), in SAELens' layout, with the trained SAE's math:
    h = act((x - b_dec) @ W_enc + b_enc), x_hat = h @ W_dec + b_dec. A tied SAE is saved with
    W_enc = W_dec^T and b_enc = 0, so one formula serves both; `act` is the activation's inference
    rule in the registry (`broken_latents.saes.activations`)."""

    label: str
    seed: int
    config: SAEConfig
    W_enc: torch.Tensor
    """[D, K]"""
    W_dec: torch.Tensor
    """[K, D]"""
    b_enc: torch.Tensor
    """[K]"""
    b_dec: torch.Tensor
    """[D]"""
    threshold: torch.Tensor | None = None
    """[K], JumpReLU: the learned threshold or the aux loss's final tau_j; BatchTopK: the one
    inference threshold estimated in training, for every latent."""

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def activation(self) -> str:
        return self.config.activation

    @property
    def latents(self) -> int:
        return self.W_dec.shape[0]

    @property
    def widths(self) -> list[int] | None:
        """A Matryoshka SAE's nested prefix widths (`decode(h, width=w)`), else None."""
        return self.config.matryoshka_widths

    def encode_pre(self, x_BD: torch.Tensor) -> torch.Tensor:
        return (x_BD - self.b_dec) @ self.W_enc + self.b_enc

    @torch.no_grad()
    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Latent activations [..., K] of inputs [..., D]."""
        x_BD = torch.as_tensor(x_BD, dtype=self.W_enc.dtype)
        return activation(self.activation).infer(
            self.encode_pre(x_BD), self.threshold, self.config.k
        )

    @torch.no_grad()
    def decode(self, h_BK: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Reconstruction [..., D]; `width`: from the first `width` latents only (a Matryoshka prefix)."""
        h_BK = torch.as_tensor(h_BK, dtype=self.W_dec.dtype)
        if width is None:
            return h_BK @ self.W_dec + self.b_dec
        return h_BK[..., :width] @ self.W_dec[:width] + self.b_dec

    def __repr__(self) -> str:
        D, K = self.W_enc.shape
        return (
            f"SAE({self.label!r} seed {self.seed}: {self.architecture} {self.activation}, {D} dims -> {K} latents; "
            f"encode(x), decode(h), W_enc [D, K], W_dec [K, D])"
        )

    def __call__(self, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, x_hat), as the training code's SAEs return them."""
        h = self.encode(x_BD)
        return h, self.decode(h)

    @classmethod
    def load(cls, path: str | Path, config: SAEConfig, seed: int) -> "SAE":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(tensors)
        if activation(config.activation).thresholded:
            missing |= {"threshold"} - set(tensors)
        if missing:
            raise ConfigError("DIR", f"{path} lacks {sorted(missing)}")
        return cls(
            config.label,
            seed,
            config,
            tensors["W_enc"],
            tensors["W_dec"],
            tensors["b_enc"],
            tensors["b_dec"],
            tensors.get("threshold"),
        )


# -- a run directory ---------------------------------------------------------------------------


@dataclass
class Run:
    """A run directory, loaded: everything `broken-latents run` wrote, as objects."""

    path: Path
    config: ExperimentConfig
    """config.toml"""
    world: World
    """Rebuilt from the config: the same directions (`world.directions` [F, D]), rates and magnitudes."""
    saes: dict[str, dict[int, SAE]]
    """saes[label][seed], from weights/LABEL-seedN.safetensors."""
    metrics: Metrics
    """metrics.json, typed."""
    history: TrainingHistory | None = field(default=None, repr=False)
    """history.json, typed (`.steps`, `.runs[i].label / .seed / .terms`); None for runs from before it."""

    @property
    def seeds(self) -> list[int]:
        return sorted({seed for by_seed in self.saes.values() for seed in by_seed})

    def __repr__(self) -> str:
        labels = ", ".join(self.saes)
        world = self.config.world
        return (
            f"Run({str(self.path)!r}: {self.config.name}, SAEs {labels} x seeds {self.seeds}, "
            f"{world.features} features in {world.dim} dims; .saes[label][seed], .world, .metrics, .config)"
        )


def load_run(directory: str | Path) -> Run:
    """Load a run directory; a path that is not a complete run raises ConfigError naming it."""
    path = Path(directory)
    if not path.is_dir():
        raise ConfigError("DIR", f"{path} is not a directory")
    for needed in ("metrics.json", "config.toml"):
        if not (path / needed).is_file():
            raise ConfigError("DIR", f"{path} is not a run directory (no {needed})")
    config = load_toml(path / "config.toml")
    metrics = read_metrics(path / "metrics.json", "DIR")
    saes: dict[str, dict[int, SAE]] = {}
    for sae_config in config.sae:
        pattern = re.compile(re.escape(sae_config.label) + r"-seed(\d+)\.safetensors")
        files = {
            int(m.group(1)): f
            for f in (path / "weights").glob("*.safetensors")
            if (m := pattern.fullmatch(f.name))
        }
        if not files:
            raise ConfigError(
                "DIR", f"{path / 'weights'} has no {sae_config.label}-seedN.safetensors"
            )
        saes[sae_config.label] = {
            seed: SAE.load(files[seed], sae_config, seed) for seed in sorted(files)
        }
    history_path = path / "history.json"
    history = (
        TrainingHistory.from_json(json.loads(history_path.read_text()))
        if history_path.is_file()
        else None
    )
    return Run(path, config, World.build(config.world), saes, metrics, history)


# -- worlds to SAELens --------------------------------------------------------------------------


def export_world(world: World | str | Path | ExperimentConfig, path: str | Path) -> Path:
    """Write a world as a folder SAELens' `SyntheticModel.load_from_disk` reads to the same distribution
    (and `world.load = "PATH"` reads back): a `World` (e.g. `load_run(DIR).world`), a registered
    experiment's name, a .toml path or a config. Raises ValueError naming what has no SAELens form
    ("force" relations, magnitude laws SAELens cannot regenerate)."""
    from .world.saelens import export_world as write_world

    if not isinstance(world, World):
        world = World.build(load_config(world).world)
    return write_world(world, path)


# -- train and analyse in memory ---------------------------------------------------------------


def load_config(target: str | Path | ExperimentConfig) -> ExperimentConfig:
    """A registered experiment's config (a copy, safe to change), a .toml path, or a config as is."""
    from .pipeline.resolve import resolve_target

    return resolve_target(target).config


def train(
    target: str | Path | ExperimentConfig,
    *,
    seeds: int | None = None,
    samples: int | None = None,
    set: tuple[str, ...] | list[str] = (),
    device: str = "cpu",
    progress: bool = False,
):
    """Train every SAE of an experiment (name, .toml path or config) in memory: a `train.TrainResult`
    with `.stacks` (the SAEs), `.world` and `.history` (a `TrainingHistory`); on stored activations the
    world is the file's rows (`world.activations.StoredActivations`). `set`: "KEY=VALUE" overrides, as
    the CLI's --set. Checked before anything trains, as `run` is."""
    from .pipeline.resolve import budget, check_trainable, resolve_target
    from .training.on_activations import train_run

    config = resolve_target(target, [*budget(seeds, samples), *set]).config
    return train_run(config, device, progress, check_trainable(config, device))


def run(
    target: str | Path | ExperimentConfig,
    out: str | Path,
    *,
    seeds: int | None = None,
    samples: int | None = None,
    set: tuple[str, ...] | list[str] = (),
    device: str = "cpu",
    progress: bool = False,
) -> Run:
    """`broken-latents run`: train, analyse, check the claims, write the run directory `out`, and
    give it back loaded (`load_run(out)`)."""
    from .pipeline.resolve import budget, resolve_target
    from .pipeline.run import run_experiment

    resolved = resolve_target(target, [*budget(seeds, samples), *set])
    run_experiment(resolved, Path(out), device=device, progress=progress)  # checks it first
    return load_run(out)


def analyse(result, clean_cos: float | None = None) -> Metrics:
    """Typed metrics of a `train(...)` result; with the claims of the registered experiment of the
    same name, if there is one (as `broken-latents run` does)."""
    from .experiments.claims import measure_claims
    from .pipeline.resolve import claims_of

    target = claims_of(result.config)
    return measure_claims(
        result, target.claims, target.clean_cos if clean_cos is None else clean_cos
    )
