"""Has training converged? A loss still falling at the end says the SAEs would change with more samples.

The rule (`loss_drop`, `STILL_FALLING`): the training loss is the SAE's own loss terms at their full
weights (mse + l1 x coefficient, + prefix_mse for Matryoshka SAEs), from the logged batch means of
history.json. Scheduled terms (the aux and inverse penalties) are left out: their weights ramp up on
purpose. Over the last WINDOW of the logged steps (at least MIN_WINDOW of them) its mean is compared
with the mean over the window before; a drop of more than STILL_FALLING means still falling.

Measured on the registered experiments at their budgets (1-2 seeds each, 26 SAEs): every converged run
dropped by at most 2.7% over its last 10% (the cosine decay's quiet end) and by at most 6.2% over the
last 10% at full learning rate (batch noise); recap-absorption at 3M samples and lr 3e-4 (untrained:
no claim holds) dropped by 63-77%.
"""

from __future__ import annotations

import numpy as np

WINDOW = 0.1
"""Share of the logged steps in each of the two windows compared."""
MIN_WINDOW = 5
"""Fewest logged steps per window: fewer single-batch losses would be noise."""
STILL_FALLING = 0.1
"""Relative drop of the windowed mean loss above which training had not converged."""


def loss_drop(terms: dict[str, list[float | None]], weights: dict[str, float]) -> float | None:
    """(mean over the window before the last - mean over the last window) / mean over the window before,
    of the weighted loss; None when too few steps were logged to tell (2 x MIN_WINDOW) or a value is missing."""
    named = [name for name, weight in weights.items() if weight and name in terms]
    if not named or "mse" not in named:
        return None
    steps = len(terms["mse"])
    width = max(int(round(WINDOW * steps)), MIN_WINDOW)
    if steps < 2 * width:
        return None
    loss = np.zeros(2 * width)
    for name in named:
        values = terms[name][steps - 2 * width:]
        if any(v is None for v in values):
            return None
        loss += weights[name] * np.asarray(values, dtype=float)
    before, last = loss[:width].mean(), loss[width:].mean()
    return float((before - last) / before) if before > 0 else None


def still_falling(drop: float | None) -> bool | None:
    return None if drop is None else drop > STILL_FALLING
