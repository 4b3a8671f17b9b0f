"""Broken-latent detection on SAEs trained elsewhere, from their weights and activations alone."""
