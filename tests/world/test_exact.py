"""Known answers for the single-latent world: exact distribution, analytic optimum, and training reaching it."""

import pytest
import torch

from broken_latents.config.schema import ExperimentConfig, SAEConfig, TrainConfig
from broken_latents.world.exact import covariance, expected_loss_optimum, firing_distribution
from broken_latents.experiments import get
from broken_latents.training.loop import train
from broken_latents.world.model import World

WORLD = get("single-latent").config.world


def _feature_profile(direction_D: torch.Tensor, world: World) -> torch.Tensor:
    return (
        torch.nn.functional.normalize(direction_D.double(), dim=0) @ world.directions_ND.double().T
    )


def test_enumerated_distribution_matches_marginals():
    world = World.build(WORLD)
    f, p = firing_distribution(world)
    assert p.sum().item() == pytest.approx(1.0)
    assert torch.allclose((f > 0).double().T @ p, world.marginal_rates().double(), atol=1e-6)
    assert len(p) == 10  # children never fire without the parent: 2 (f3) x (1 + 4) patterns


def test_exact_optimum_is_the_first_principal_component():
    world = World.build(WORLD)
    top = torch.linalg.eigh(covariance(world)).eigenvectors[:, -1]
    top = top * top.sign()[0]
    for architecture in ("tied", "untied"):
        sae = expected_loss_optimum(
            world, SAEConfig(label="s", architecture=architecture, latents=1, l1=3e-3)
        )
        profile = _feature_profile(sae.W_dec_SKD[0, 0].detach(), world)
        assert profile @ top == pytest.approx(1.0, abs=1e-3), architecture
        # the post's picture: mostly parent, a large share of each child, nothing of the independent feature
        assert (
            profile.argmax() == 0
            and profile[1] > 0.3
            and profile[2] > 0.3
            and abs(profile[3]) < 0.02
        )


def test_training_reaches_the_exact_optimum():
    world = World.build(WORLD)
    saes = [SAEConfig(label=a, architecture=a, latents=1) for a in ("tied", "untied")]
    config = ExperimentConfig(
        name="t",
        world=WORLD,
        train=TrainConfig(samples=3_000_000, seeds=3, lr=1e-3, eval_samples=5_000),
        sae=saes,
    )
    result = train(config, progress=False)
    for stack in result.stacks:
        optimum = expected_loss_optimum(world, stack.config).W_dec_SKD[0, 0].detach()
        want = _feature_profile(optimum, world)
        cosines = [
            float(_feature_profile(stack.sae.W_dec_SKD[s, 0].detach(), world) @ want / want.norm())
            for s in range(3)
        ]
        # Every seed finds the optimum's axis, but some settle on the sign-flipped local minimum
        # (test below): measured here in 1 of 3 tied and 2 of 3 untied seeds.
        assert all(abs(c) >= 0.98 for c in cosines), (stack.config.label, cosines)
        assert any(c >= 0.98 for c in cosines), (stack.config.label, cosines)


def test_sign_flipped_latent_is_a_worse_local_minimum():
    """The flipped latent fires when the parent is absent (95% of inputs): its expected loss is
    higher, but exact optimisation from some starts (seeds 2 and 4 here) stops there too."""
    world = World.build(WORLD)
    f, p = firing_distribution(world)
    x = (f @ world.directions_ND.double())[None]
    config = SAEConfig(label="s", architecture="tied", latents=1, l1=3e-3)
    found = {}
    for seed in (0, 2):
        sae = expected_loss_optimum(world, config, seed=seed)
        h, x_hat = sae(x)
        loss = (((x_hat - x).pow(2).sum(-1) + config.l1 * h.sum(-1)) * p).sum().item()
        sign = float(_feature_profile(sae.W_dec_SKD[0, 0].detach(), world)[0].sign())
        found[sign] = (loss, float(((h[0, :, 0] > 0).double() * p).sum()))
    assert set(found) == {1.0, -1.0}
    assert found[-1.0][0] > found[1.0][0] + 1e-3
    assert found[1.0][1] == pytest.approx(0.3, abs=0.01) and found[-1.0][1] > 0.9


@pytest.mark.parametrize(
    "parent_rate, child_rate", [(0.25, 0.05), (0.3, 0.1), (0.1, 0.1), (0.05, 0.2), (0.2, 0.15)]
)
def test_tied_absorption_boundary_matches_the_exact_expected_loss(parent_rate, child_rate):
    """Optimise the exact expected loss from the true basis and from the 45-degree pair: the lower one
    is the one the boundary formula predicts, and the L1 gap is what basis_and_pair_l1 says."""
    from broken_latents.config.schema import HierarchyConfig, WorldConfig
    from broken_latents.world.exact import (
        basis_and_pair_l1,
        expected_loss,
        tied_absorption_boundary,
    )

    world = World.build(
        WorldConfig(
            features=4,
            dim=6,
            firing=[parent_rate, child_rate, 0.25, 0.25],
            magnitude=1.0,
            hierarchy=[HierarchyConfig(parent=0, children=[1], mode="force")],
        )
    )
    config = SAEConfig(label="tied", architecture="tied", latents=4, l1=3e-3)
    r = 2**-0.5
    basis = torch.eye(4, dtype=torch.float64)
    pair = torch.tensor(
        [[r, r, 0, 0], [r, -r, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64
    )
    losses = [
        expected_loss(world, expected_loss_optimum(world, config, start_KN=start))
        for start in (basis, pair)
    ]
    basis_l1, pair_l1 = basis_and_pair_l1(parent_rate, child_rate)
    assert (
        (losses[0] < losses[1])
        == (parent_rate > tied_absorption_boundary(child_rate))
        == (basis_l1 < pair_l1)
    )
    # the gap is the L1 coefficient times the L1 gap, up to the O(l1^2) shrinkage
    assert losses[1] - losses[0] == pytest.approx(3e-3 * (pair_l1 - basis_l1), abs=2e-5)
