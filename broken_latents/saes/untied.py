"""Untied SAE: h = act(W_enc^T (x - b_dec) + b_enc), x_hat = h W_dec + b_dec, SAELens-style."""

import torch
from torch import nn

from .base import StackedSAE
from .registry import register


@register
class UntiedSAE(StackedSAE):
    architecture = "untied"
    hand_gradients = "untied"
    # Without the norm weighting an untied SAE grows decoder rows to dodge the L1.
    l1_weighted_by_decoder_norm = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # SAELens starts the encoder as the decoder's transpose.
        self.W_enc_SDK = nn.Parameter(self.W_dec_SKD.detach().transpose(1, 2).clone())
        self.b_enc_SK = nn.Parameter(torch.zeros(self.n_saes, self.latents))

    def encoder(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.W_enc_SDK, self.b_enc_SK
