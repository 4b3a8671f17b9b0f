"""Worlds several test files train on."""

TINY = """
name = "tiny-world"
description = "two independent features and a parent/child pair"

[world]
features = 4
dim = 8
firing = [0.3, 0.1, 0.2, 0.2]
magnitude = 1.0

[[world.hierarchy]]
parent = 0
children = [1]

[train]
samples = 150_000
seeds = 2
lr = 3e-3
eval_samples = 5_000

[[sae]]
label = "tied"
architecture = "tied"
latents = 4

[[sae]]
label = "untied"
architecture = "untied"
latents = 3
activation = "jumprelu"
"""
"""4 features in 8 dims (parent 0, child 1), 2 seeds, a tied ReLU SAE and an untied JumpReLU one: a run
directory in seconds."""
