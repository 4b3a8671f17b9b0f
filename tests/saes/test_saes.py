"""SAE invariants: SAELens shapes, tied really tied, the L1 forms, JumpReLU gating, exported weights."""

import pytest
import torch

from broken_latents.config.schema import SAEConfig
from broken_latents.saes import ARCHITECTURES, build_sae


def _sae(architecture, activation="relu", n=3, dim=7, latents=4):
    return build_sae(
        SAEConfig(label="x", architecture=architecture, latents=latents, activation=activation),
        n,
        dim,
        list(range(n)),
        "random",
    )


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_saelens_layout(architecture):
    state = _sae(architecture).saelens_state(1)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "W_enc": (7, 4),
        "W_dec": (4, 7),
        "b_enc": (4,),
        "b_dec": (7,),
    }


def test_tied_encoder_is_decoder_transpose_after_updates():
    sae = _sae("tied")
    with torch.no_grad():
        sae.W_dec_SKD.add_(torch.randn_like(sae.W_dec_SKD))
    W_enc, b_enc = sae.encoder()
    assert torch.equal(W_enc, sae.W_dec_SKD.transpose(1, 2))
    assert torch.equal(b_enc, torch.zeros_like(b_enc))
    assert {name for name, _ in sae.named_parameters()} == {"W_dec_SKD", "b_dec_SD"}


def test_tied_forward_is_the_posts_formula():
    sae = _sae("tied")
    with torch.no_grad():
        sae.b_dec_SD.normal_()
    x = torch.randn(3, 5, 7)
    h, x_hat = sae(x)
    W, b = sae.W_dec_SKD, sae.b_dec_SD
    expected_h = torch.relu(torch.einsum("skd,sbd->sbk", W, x - b[:, None]))
    assert torch.allclose(h, expected_h, atol=1e-6)
    assert torch.allclose(x_hat, torch.einsum("sbk,skd->sbd", h, W) + b[:, None], atol=1e-6)


def test_untied_starts_with_encoder_as_decoder_transpose_then_moves_freely():
    sae = _sae("untied")
    assert torch.equal(sae.W_enc_SDK, sae.W_dec_SKD.transpose(1, 2))
    with torch.no_grad():
        sae.W_enc_SDK.add_(1.0)
    assert not torch.equal(sae.W_enc_SDK, sae.W_dec_SKD.transpose(1, 2))


def test_l1_forms():
    for architecture, weighted in [("tied", False), ("untied", True)]:
        sae = _sae(architecture)
        with torch.no_grad():
            sae.W_dec_SKD.mul_(3.0)
        expected = 3.0 if weighted else 1.0
        assert torch.allclose(sae.l1_weights_SK(), torch.full((3, 4), expected), atol=1e-5)


def test_jumprelu_zeroes_below_threshold_and_keeps_above():
    sae = _sae("untied", activation="jumprelu")
    with torch.no_grad():
        sae.log_threshold_SK.fill_(0.0)  # threshold 1
    pre = torch.tensor([0.5, 0.99, 1.01, 3.0]).expand(3, 1, 4)
    assert torch.equal(sae.activate(pre)[0, 0], torch.tensor([0.0, 0.0, 1.01, 3.0]))


def test_seeds_differ_and_repeat():
    a, b = _sae("tied"), _sae("tied")
    assert torch.equal(a.W_dec_SKD, b.W_dec_SKD)
    assert not torch.equal(a.W_dec_SKD[0], a.W_dec_SKD[1])
    assert torch.allclose(a.W_dec_SKD.norm(dim=-1), torch.ones(3, 4))
