"""The thin base every SAE architecture shares: S SAEs of one shape, parameters stacked [S, ...].

Shapes follow SAELens so weights interoperate: W_enc [D, K], W_dec [K, D], b_enc [K],
b_dec [D], each with a leading S. An architecture is one file in this folder: a subclass,
decorated with `@register`, that states

- `architecture`: its registry name (the `[[sae]] architecture` of the TOML);
- `hand_gradients`: which hand-derived gradient formulas of the engine compute its gradients
  ("tied" or "untied", see `engine.fastpath.Architecture`), or None: it trains by autograd,
  and `train.engine = "auto"` picks autograd for it;
- `Options`: a dataclass of the [[sae]] fields it owns (written flat in the table, validated
  by the config like any other field; `config.options` holds them). Every Options has
  `l1_decoder_norm`, the default its architecture needs;
- `encoder()`, and if it wants `__init__` (extra parameters) and `loss_terms` (extra terms:
  the training loop sums whatever is declared there).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from .activations import activation as activation_named, keep_largest
from .losses import aux_loss, inverse_loss

# SAEConfig (config/schema.py) stays a name in quotes here: the config validates architecture names
# against this package's registry, so imports run config -> saes and never back.


class JumpReLU(torch.autograd.Function):
    """h = pre * [pre > theta]. Gradient to pre as for ReLU above the threshold; gradient to
    theta through the rectangle-kernel pseudo-derivative of Rajamanoharan et al. (2024)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_h):
        pre, threshold = ctx.saved_tensors
        above = pre > threshold
        near = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
        grad_threshold = -(threshold / ctx.bandwidth) * near * grad_h
        grad_threshold = (
            grad_threshold.sum_to_size(threshold.shape) if threshold.requires_grad else None
        )
        return grad_h * above, grad_threshold, None


class StackedSAE(nn.Module):
    architecture: ClassVar[str]
    """Registry name, e.g. "tied"."""
    hand_gradients: ClassVar[str | None]
    """The engine's hand-derived gradient formulas for this architecture ("tied", "untied"), or
    None for autograd only. Each registered class states it in its own body (see `register`)."""
    Options: ClassVar[type]
    """The dataclass of the fields this architecture owns (see the module docstring)."""
    tied_encoder: ClassVar[bool] = False
    """W_enc is W_dec^T and b_enc is 0 (SAELens gets that encoder written out, and `metadata.tied`)."""
    jumprelu_bandwidth: ClassVar[float] = 0.05

    def __init__(self, config: "SAEConfig", n_saes: int, dim: int, seeds: list[int], init: str):
        super().__init__()
        self.config = config
        self.n_saes, self.dim, self.latents = n_saes, dim, config.latents
        W_dec = torch.stack(
            [initial_decoder(config.latents, dim, seed, config.label, init) for seed in seeds]
        )
        self.W_dec_SKD = nn.Parameter(W_dec)
        self.b_dec_SD = nn.Parameter(torch.zeros(n_saes, dim))
        # A learned JumpReLU threshold only exists without the aux loss, whose tau_j replaces it.
        self.log_threshold_SK = None
        if config.activation == "jumprelu" and config.aux is None:
            self.log_threshold_SK = nn.Parameter(
                torch.full((n_saes, config.latents), math.log(0.1))
            )
        # BatchTopK's inference threshold, estimated in training (NaN until the first batch).
        self.register_buffer(
            "batchtopk_threshold_S", torch.full((n_saes,), math.nan), persistent=False
        )

    # -- the math of the post -------------------------------------------------------------

    def encoder(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_enc_SDK, b_enc_SK)."""
        raise NotImplementedError

    def encode_pre(self, x_SBD: torch.Tensor) -> torch.Tensor:
        W_enc_SDK, b_enc_SK = self.encoder()
        return (x_SBD - self.b_dec_SD[:, None]) @ W_enc_SDK + b_enc_SK[:, None]

    def thresholds(self, tau_SK: torch.Tensor | None) -> torch.Tensor | None:
        """Per-latent thresholds [S, K] of h = pre * [pre > threshold] at inference: JumpReLU's
        (learned, or the aux loss's tau_j) and BatchTopK's (one per SAE); None for ReLU and TopK."""
        if self.config.activation == "batchtopk":
            return self.batchtopk_threshold_S[:, None].expand(-1, self.latents)
        if not activation_named(self.config.activation).thresholded:
            return None
        return tau_SK if self.log_threshold_SK is None else self.log_threshold_SK.exp()

    def activate(
        self, pre_SBK: torch.Tensor, tau_SK: torch.Tensor | None = None, training: bool = False
    ) -> torch.Tensor:
        """h from the pre-activations. topk: the k largest of each sample, ReLU'd. batchtopk: in
        training (`training=True`, as `loss_terms` calls it) the k x B largest of the batch, ReLU'd,
        and the smallest value kept updates the inference threshold (an exponential moving average
        over steps, as the BatchTopK and Matryoshka papers estimate theta); at inference a JumpReLU
        at that threshold, so a sample's latents do not depend on the rest of its batch. Before
        any training step there is no threshold and inference uses the batch rule."""
        activation = activation_named(self.config.activation)
        if activation.name == "batchtopk" and (
            training or self.batchtopk_threshold_S.isnan().any()
        ):
            h = keep_largest(
                torch.relu(pre_SBK).flatten(1), self.config.k * pre_SBK.shape[1], dim=-1
            )
            if training:
                self._update_batchtopk_threshold(h.detach())
            return h.view_as(pre_SBK)
        if not activation.thresholded:
            return activation.infer(pre_SBK, None, self.config.k)
        threshold = self.thresholds(tau_SK)
        if threshold is None:  # an aux-thresholded JumpReLU before any tau exists
            return torch.relu(pre_SBK)
        # At inference the registry's rule; in training, its pseudo-derivative trains a learned threshold.
        return JumpReLU.apply(pre_SBK, threshold[:, None], self.jumprelu_bandwidth)

    batchtopk_threshold_decay: ClassVar[float] = 0.99
    """Per training step: the threshold averages the last ~100 batches' smallest kept activations."""

    @torch.no_grad()
    def _update_batchtopk_threshold(self, h_SX: torch.Tensor) -> None:
        kept = torch.where(h_SX > 0, h_SX, torch.full_like(h_SX, math.inf)).amin(-1)
        kept = torch.where(
            kept.isinf(), torch.zeros_like(kept), kept
        )  # nothing fired: any threshold >= 0 agrees
        self.record_batchtopk_threshold(kept)

    @torch.no_grad()
    def record_batchtopk_threshold(self, kept_S: torch.Tensor) -> None:
        """One step of the inference threshold's moving average, given each SAE's smallest kept
        activation of the batch (0 if nothing fired); engines that select without `activate` call it."""
        kept = kept_S.to(self.batchtopk_threshold_S)
        old = self.batchtopk_threshold_S
        decay = self.batchtopk_threshold_decay
        self.batchtopk_threshold_S.copy_(
            torch.where(old.isnan(), kept, decay * old + (1 - decay) * kept)
        )

    def decode(self, h_SBK: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """The reconstruction from every latent, or from the first `width` (a Matryoshka prefix)."""
        if width is not None:
            return h_SBK[..., :width] @ self.W_dec_SKD[:, :width] + self.b_dec_SD[:, None]
        return h_SBK @ self.W_dec_SKD + self.b_dec_SD[:, None]

    @property
    def l1_weighted_by_decoder_norm(self) -> bool:
        return self.config.options.l1_decoder_norm

    def l1_weights_SK(self) -> torch.Tensor:
        if self.l1_weighted_by_decoder_norm:
            return self.W_dec_SKD.norm(dim=-1)
        return torch.ones(self.n_saes, self.latents, device=self.W_dec_SKD.device)

    def forward(
        self, x_SBD: torch.Tensor, tau_SK: torch.Tensor | None = None, training: bool = False
    ):
        h = self.activate(self.encode_pre(x_SBD), tau_SK, training)
        return h, self.decode(h)

    # -- named, weighted loss terms: the training loop sums what is declared here ----------

    @classmethod
    def loss_weights(cls, config: "SAEConfig", aux_lambda: float = 0.0) -> dict[str, float]:
        """The weight of every loss term an SAE of `config` trains on, by name. The hand-derived
        gradients know "mse", "l1" and "aux" (`fastpath.HAND_DERIVED_TERMS`): an SAE that declares
        another term trains by autograd unless its gradients are derived too."""
        weights = {"mse": 1.0, "l1": config.l1}
        if config.nested_widths():
            weights["prefix_mse"] = 1.0
        if config.aux is not None:
            weights["aux"] = aux_lambda
        return weights

    def loss_terms(
        self, x_SBD: torch.Tensor, tau_SK: torch.Tensor | None = None, aux_lambda: float = 0.0
    ):
        """({name: (weight, value per SAE and sample [S, B])}, activations h_SBK).

        mse: ||x_hat - x||^2; l1: sum_k w_k h_k; prefix_mse (Matryoshka): sum over the widths w
        below `latents` of ||x_hat_w - x||^2, x_hat_w the reconstruction from the first w latents,
        so mse + prefix_mse is the nested loss with the full width counted once; aux (with
        [sae.aux]): the activation-orthogonality loss at the aux loss's thresholds tau_SK (only
        while its weight is above 0)."""
        h, x_hat = self(x_SBD, tau_SK, training=True)
        values = {
            "mse": (x_hat - x_SBD).pow(2).sum(-1),
            "l1": (h * self.l1_weights_SK()[:, None]).sum(-1),
        }
        widths = self.config.nested_widths()
        if widths:
            values["prefix_mse"] = sum(
                (self.decode(h, w) - x_SBD).pow(2).sum(-1) for w in widths[:-1]
            )
        if self.config.aux is not None and aux_lambda > 0:
            values["aux"] = aux_loss(x_SBD, self.b_dec_SD, self.W_dec_SKD, h.detach(), tau_SK)
        weights = self.loss_weights(self.config, aux_lambda)
        return {name: (weights[name], value) for name, value in values.items()}, h

    def parameter_terms(
        self, inverse: tuple | None = None
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """Terms on the parameters alone, without a batch: {name: (weight, value per SAE [S])}. Every
        engine trains them by autograd, added to the batch terms' gradients (they cost O(S K D)).

        inverse (with [sae.inverse]): (weight, u_SKPD, mask_SKP) of `InverseState.schedule`, the
        inverse technique's penalty on W_dec's alignment with the higher peaks' directions."""
        terms = {}
        if (
            getattr(self.config, "inverse", None) is not None
            and inverse is not None
            and inverse[0] > 0
        ):
            weight, u_SKPD, mask_SKP = inverse
            terms["inverse"] = (weight, inverse_loss(self.W_dec_SKD, u_SKPD, mask_SKP))
        return terms

    # -- export ---------------------------------------------------------------------------

    @torch.no_grad()
    def saelens_state(self, s: int) -> dict[str, torch.Tensor]:
        W_enc_SDK, b_enc_SK = self.encoder()
        return {
            "W_enc": W_enc_SDK[s].contiguous().clone(),
            "W_dec": self.W_dec_SKD[s].contiguous().clone(),
            "b_enc": b_enc_SK[s].contiguous().clone(),
            "b_dec": self.b_dec_SD[s].contiguous().clone(),
        }

    def saelens_tensors(self, s: int, tau_SK: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """What SAE s's weight files hold: `saelens_state`, plus for a thresholded activation
        (JumpReLU, BatchTopK) the threshold of h = pre * [pre > threshold] (`thresholds`)."""
        tensors = self.saelens_state(s)
        if activation_named(self.config.activation).thresholded:
            tensors["threshold"] = self.thresholds(tau_SK)[s].detach().clone()
        return tensors


def initial_decoder(latents: int, dim: int, seed: int, label: str, init: str) -> torch.Tensor:
    """Unit-norm decoder rows: Gaussian directions, or orthonormal ones where latents <= dim.

    Seeded by (seed, label) so an SAE's start does not depend on which others train beside it."""
    gen = torch.Generator().manual_seed(
        seed * 1_000_003 + sum(ord(c) * 31**i for i, c in enumerate(label)) % 1_000_003
    )
    W = torch.randn(latents, dim, generator=gen, dtype=torch.float64)
    if init == "orthogonal" and latents <= dim:
        q, _ = torch.linalg.qr(W.T)
        W = q.T
    return torch.nn.functional.normalize(W, dim=1).float()
