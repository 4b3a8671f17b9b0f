"""Hypothesis draws the same examples on every run (`derandomize`), so a property test that fails
fails on every machine, and `make test` never turns red by the luck of one draw. To look for new
counterexamples, `HYPOTHESIS_PROFILE=explore` draws fresh examples each run."""

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
