"""FlatAdam (numpy, compiled, and torch) takes the steps torch.optim.Adam takes."""

import numpy as np
import pytest
import torch

from broken_latents.engine.optim import FlatAdam


@pytest.mark.parametrize("on", ["numpy", "torch"])
def test_flat_adam_matches_torch_adam(on):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(50, generator=gen, dtype=torch.float64)
    grads = [torch.randn(50, generator=gen, dtype=torch.float64) for _ in range(20)]
    lrs = [1e-2 * (1 - i / 40) for i in range(20)]  # a changing rate, as the decay schedules give

    reference = start.clone().requires_grad_(True)
    torch_adam = torch.optim.Adam([reference], lr=1e-2)
    flat = start.clone().numpy() if on == "numpy" else start.clone()
    ours = FlatAdam(flat, lr=1e-2)
    for grad, lr in zip(grads, lrs):
        reference.grad = grad.clone()
        torch_adam.param_groups[0]["lr"] = lr
        torch_adam.step()
        ours.step(grad.numpy() if on == "numpy" else grad, lr)
    np.testing.assert_allclose(np.asarray(flat), reference.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert not np.allclose(np.asarray(flat), start.numpy())  # it moved
