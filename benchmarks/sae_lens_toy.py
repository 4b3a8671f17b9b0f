"""SAELens' own toy trainer (`sae_lens.synthetic.train_toy_sae`) on the package's worlds.

Only used when `sae_lens` is installed; it is not a dependency of the project. SAELens'
standard SAE is untied (its own encoder, L1 weighted by decoder norm) and has no
activation-orthogonality loss, so it only has rows with aux off.
"""

from __future__ import annotations

import contextlib
import io
import time

import torch

from broken_latents.config.schema import WorldConfig
from broken_latents.world.model import World


def force_parents(world_config: WorldConfig, magnitudes_N: torch.Tensor):
    """SAELens modifier for the hierarchy's force rule: a firing child switches its parent on,
    at the parent's own magnitude (the worlds here have fixed magnitudes)."""

    def modify(activations_BN: torch.Tensor) -> torch.Tensor:
        activations_BN = activations_BN.clone()
        for rel in world_config.hierarchy:
            assert rel.mode == "force", "only the force rule is mapped onto SAELens"
            fires = (activations_BN[:, rel.parent] > 0) | (activations_BN[:, rel.children] > 0).any(
                dim=1
            )
            activations_BN[:, rel.parent] = fires * magnitudes_N[rel.parent]
        return activations_BN

    return modify


def run_sae_lens(
    world_config: WorldConfig,
    latents: int,
    samples: int,
    l1: float = 3e-3,
    batch_size: int = 1024,
    device: str = "cpu",
) -> float:
    """Train one SAELens standard SAE; return samples/s of `train_toy_sae` (its trainer set-up included)."""
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, train_toy_sae

    world = World.build(world_config)
    features = FeatureDictionary(num_features=world.n_features, hidden_dim=world_config.dim)
    with torch.no_grad():
        features.feature_vectors.copy_(
            world.directions_ND
        )  # the package's directions, not SAELens' random ones
    features.to(device)
    generator = ActivationGenerator(
        num_features=world.n_features,
        firing_probabilities=world.rates_N,
        mean_firing_magnitudes=world.magnitudes_N,
        modify_activations=force_parents(world_config, world.magnitudes_N)
        if world_config.hierarchy
        else None,
        device=device,
    )
    sae = StandardTrainingSAE(
        StandardTrainingSAEConfig(
            d_in=world_config.dim, d_sae=latents, l1_coefficient=l1, device=device
        )
    )

    start = time.perf_counter()
    with contextlib.redirect_stderr(
        io.StringIO()
    ):  # its progress bar would interleave with the table
        train_toy_sae(
            sae,
            features,
            generator,
            training_samples=samples,
            batch_size=batch_size,
            lr=3e-4,
            device=device,
        )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return samples / (time.perf_counter() - start)
