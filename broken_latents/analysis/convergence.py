"""Has training converged? A loss term still falling at the end says the SAEs would change with more samples.

The rule (`loss_drop`, `STILL_FALLING`): take the SAE's own loss terms at their full weights (mse, l1 x
coefficient, prefix_mse for Matryoshka SAEs) from the logged batch means of history.json; scheduled
terms (the aux and inverse penalties) are left out, as their weights ramp up on purpose. Compare each
term's mean over the last WINDOW of the logged steps (at least MIN_WINDOW steps) with its mean over the
window before; its fall, as a share of the whole loss over the window before, is the term's drop. The
largest drop of any term above STILL_FALLING means the SAE had not converged.

Each term against the whole loss, not the whole loss alone: early on the MSE falls while the L1 rises
(recap-absorption at 3M samples: MSE fell by 47-66% of the loss, the sum by 4%); and not each term
against itself: a converged tied SAE's MSE is ~0.1% of its loss and still halves in the cosine decay.

Measured on 13 registered experiments at their budgets (1-2 seeds, 47 SAEs; 7 others not measured): every
converged SAE's largest drop was at most 2.7% over its last 10% of training, and at most 6.2% over the
last 10% at full learning rate (batch noise, no decay); recap-absorption at 3M samples and lr 3e-4 (no
claim held) dropped 47-66%; narrow worlds at 5M samples and lr 3e-4 had settled (at most 3.4%).
"""

from __future__ import annotations

import numpy as np

WINDOW = 0.1
"""Share of the logged steps in each of the two windows compared."""
MIN_WINDOW = 5
"""Fewest logged steps per window: fewer single-batch losses would be noise."""
STILL_FALLING = 0.1
"""Largest fall of one term, as a share of the whole loss, above which training had not converged."""


def loss_drop(
    terms: dict[str, list[float | None]], weights: dict[str, float]
) -> tuple[float, str] | None:
    """(largest drop, its term) by the rule above, or None when too few steps were logged to tell
    (2 x MIN_WINDOW) or a term has a gap in the windows."""
    named = [name for name, weight in weights.items() if weight and name in terms]
    if "mse" not in named:
        return None
    steps = len(terms["mse"])
    width = max(int(round(WINDOW * steps)), MIN_WINDOW)
    if steps < 2 * width:
        return None
    before, last = {}, {}
    for name in named:
        values = terms[name][steps - 2 * width :]
        if any(v is None for v in values):
            return None
        weighted = weights[name] * np.asarray(values, dtype=float)
        before[name], last[name] = weighted[:width].mean(), weighted[width:].mean()
    whole = sum(before.values())
    if not whole > 0:
        return None
    drops = {name: (before[name] - last[name]) / whole for name in named}
    term = max(drops, key=drops.get)
    return float(drops[term]), term


def still_falling(drop: float | None) -> bool | None:
    return None if drop is None else drop > STILL_FALLING
