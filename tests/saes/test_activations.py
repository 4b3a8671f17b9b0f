"""One activation registry: training's SAE, the API's SAE and the SAELens reader compute the same h."""

import typing

import pytest
import torch

from broken_latents.api import SAE
from broken_latents.config.schema import K_ACTIVATIONS, SAEConfig
from broken_latents.output.saelens_format import load_sae, write_saelens
from broken_latents.saes import build_sae
from broken_latents.saes.activations import ACTIVATIONS, saelens_architectures


def test_the_config_allows_exactly_the_registered_activations():
    allowed = typing.get_args(typing.get_type_hints(SAEConfig)["activation"])
    assert set(allowed) == set(ACTIVATIONS)
    assert set(K_ACTIVATIONS) == {name for name, act in ACTIVATIONS.items() if act.uses_k}


def test_saelens_reads_every_architecture_we_write():
    readers = saelens_architectures()
    assert set(readers) == {"standard", "jumprelu", "topk"}
    for act in ACTIVATIONS.values():
        # what SAELens computes from the file is what we compute: same rule, same threshold use
        assert readers[act.saelens].thresholded == act.thresholded


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("architecture", ["tied", "untied"])
def test_one_rule_in_training_the_api_and_saelens(name, architecture, tmp_path):
    D, K = 5, 7
    config = SAEConfig(
        label="s",
        architecture=architecture,
        latents=K,
        activation=name,
        k=3 if ACTIVATIONS[name].uses_k else None,
    )
    sae = build_sae(config, n_saes=1, dim=D, seeds=[0], init="gaussian")
    with torch.no_grad():
        sae.b_dec_SD.normal_(0, 0.1)
        if hasattr(sae, "b_enc_SK"):
            sae.b_enc_SK.normal_(0, 0.1)
        if sae.log_threshold_SK is not None:
            sae.log_threshold_SK.copy_(torch.log(torch.rand(1, K) * 0.5 + 0.05))
        sae.batchtopk_threshold_S.fill_(0.3)
    x_BD = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h_trained = sae(x_BD[None])[0][0]
    tensors = sae.saelens_state(0)
    threshold = sae.thresholds(None)
    if ACTIVATIONS[name].thresholded:
        tensors["threshold"] = threshold[0].detach().clone()
    api_sae = SAE(
        "s",
        0,
        config,
        tensors["W_enc"],
        tensors["W_dec"],
        tensors["b_enc"],
        tensors["b_dec"],
        tensors.get("threshold"),
    )
    torch.testing.assert_close(api_sae.encode(x_BD), h_trained)
    folder = write_saelens(tmp_path / "s", tensors, name, tied=sae.tied_encoder, k=config.k)
    h_saelens = torch.from_numpy(load_sae(folder).encode(x_BD.numpy()))
    torch.testing.assert_close(h_saelens, h_trained, atol=1e-5, rtol=1e-5)
    # each rule leaves some latents off and some on, so the comparison says something
    assert 0 < int((h_trained > 0).sum()) < h_trained.numel()
