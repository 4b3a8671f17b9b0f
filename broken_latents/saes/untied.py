"""Untied SAE: h = act(W_enc^T (x - b_dec) + b_enc), x_hat = h W_dec + b_dec, SAELens-style."""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .base import StackedSAE, initial_decoder
from .registry import register


@register
class UntiedSAE(StackedSAE):
    architecture = "untied"
    hand_gradients = "untied"

    @dataclass
    class Options:
        l1_decoder_norm: bool = True
        """Weight each latent's L1 by its decoder row's norm. On: without it an untied SAE grows
        decoder rows to shrink its activations and dodge the L1."""
        encoder_init: Literal["transpose", "random"] = "transpose"
        """transpose: the encoder starts as the decoder's transpose (as SAELens); random: drawn
        apart, unit-norm Gaussian columns seeded like the decoder."""

    def __init__(self, config, n_saes, dim, seeds, init):
        super().__init__(config, n_saes, dim, seeds, init)
        if config.options.encoder_init == "transpose":
            W_enc = self.W_dec_SKD.detach().transpose(1, 2).clone()
        else:
            W_enc = torch.stack(
                [
                    initial_decoder(self.latents, dim, seed, f"{config.label}-encoder", init).T
                    for seed in seeds
                ]
            )
        self.W_enc_SDK = nn.Parameter(W_enc)
        self.b_enc_SK = nn.Parameter(torch.zeros(self.n_saes, self.latents))

    def encoder(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.W_enc_SDK, self.b_enc_SK
