"""Bundled default model, its held-out images and label lists (package data)."""
