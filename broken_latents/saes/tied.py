"""Tied SAE: W_enc = W_dec^T and b_enc = 0, so h = act(W (x - b)) and x_hat = h W + b."""

from dataclasses import dataclass

import torch

from .base import StackedSAE
from .registry import register


@register
class TiedSAE(StackedSAE):
    architecture = "tied"
    hand_gradients = "tied"
    tied_encoder = True

    @dataclass
    class Options:
        l1_decoder_norm: bool = False
        """Weight each latent's L1 by its decoder row's norm. Off: with it, splitting one feature
        over several shrunken tied latents is free, and spare latents duplicate instead of dying."""

    def encoder(self) -> tuple[torch.Tensor, torch.Tensor]:
        W = self.W_dec_SKD
        return W.transpose(1, 2), torch.zeros(
            W.shape[0], W.shape[1], device=W.device, dtype=W.dtype
        )
