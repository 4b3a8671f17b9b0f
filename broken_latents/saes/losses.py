"""Loss terms every architecture can declare, and the one place they are summed."""

from __future__ import annotations

import torch


def weighted_sum(terms: dict[str, tuple[float, torch.Tensor]]) -> torch.Tensor:
    """sum of weight * value over the named terms an SAE declares (see `StackedSAE.loss_terms`)."""
    return sum(weight * value for weight, value in terms.values())


def aux_loss(
    x_SBD: torch.Tensor,
    b_SD: torch.Tensor,
    W_dec_SKD: torch.Tensor,
    h_SBK: torch.Tensor,
    tau_SK: torch.Tensor,
) -> torch.Tensor:
    """Mean over latents of [h <= tau] * cos(x - b, W_j)^2, per SAE and sample [S, B] (lambda not applied)."""
    centred = torch.nn.functional.normalize(x_SBD - b_SD[:, None], dim=-1)
    directions = torch.nn.functional.normalize(W_dec_SKD, dim=-1)
    cos_SBK = centred @ directions.transpose(1, 2)
    low = (h_SBK <= tau_SK[:, None]).to(cos_SBK.dtype)
    return (low * cos_SBK.pow(2)).mean(-1)


def inverse_loss(
    W_dec_SKD: torch.Tensor, u_SKPD: torch.Tensor, mask_SKP: torch.Tensor
) -> torch.Tensor:
    """The inverse technique's penalty per SAE [S]: mean over latents of sum_p mask_jp cos(W_j, u_jp)^2
    (u_jp unit directions separating latent j's higher peaks from its main one; coefficient not applied)."""
    directions = torch.nn.functional.normalize(W_dec_SKD, dim=-1)
    cos_SKP = (u_SKPD @ directions[..., None])[..., 0]
    return (mask_SKP * cos_SKP.pow(2)).sum(-1).mean(-1)
