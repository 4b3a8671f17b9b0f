"""Tied SAE: W_enc = W_dec^T and b_enc = 0, so h = act(W (x - b)) and x_hat = h W + b."""

import torch

from .base import StackedSAE
from .registry import register


@register
class TiedSAE(StackedSAE):
    architecture = "tied"
    hand_gradients = "tied"
    # A plain L1: weighting by row norm would make splitting one feature over several
    # shrunken tied latents free, and spare latents would duplicate instead of dying.
    l1_weighted_by_decoder_norm = False

    def encoder(self) -> tuple[torch.Tensor, torch.Tensor]:
        W = self.W_dec_SKD
        return W.transpose(1, 2), torch.zeros(W.shape[0], W.shape[1], device=W.device, dtype=W.dtype)
