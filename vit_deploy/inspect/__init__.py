"""What the ViT sees: arrays (``maps``: attention, rollout, position embeddings) and the
figures drawn from them (``plots``, matplotlib imported only there)."""
