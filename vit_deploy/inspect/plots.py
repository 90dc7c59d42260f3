"""Figures for ``vit-inspect``, drawn from the arrays ``vit_deploy.inspect.maps`` returns.

Uses ``matplotlib.figure.Figure`` directly (rendered by Agg) rather than pyplot,
so importing this never switches the backend of a notebook or GUI session.
Every PNG is written atomically: to a temporary name, then ``os.replace``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vit_deploy.storage import atomic_file

DPI = 110
OVERLAY_CMAP = "inferno"
OVERLAY_ALPHA = 0.55


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` atomically, so a reader never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _show_image(ax, image: np.ndarray, cmap: str | None = None) -> None:
    s = image.shape[0]
    # nearest: small inputs (e.g. 32x32) stay crisp when drawn large
    ax.imshow(image, extent=(0, s, s, 0), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlim(0, s)
    ax.set_ylim(s, 0)


def _overlay(fig: Figure, ax, image: np.ndarray, grid: np.ndarray, label: str):
    """The image in grey with a (G, G) map drawn over it, one colour cell per patch.

    Grey underneath so every colour on the panel comes from the map. The colour
    scale spans the map's own min..max: rollout weights sit close to uniform and
    would look flat on a 0-based scale; the colour bar keeps the true values."""
    s = image.shape[0]
    _show_image(ax, image @ np.array([0.299, 0.587, 0.114]), cmap="gray")
    lo, hi = float(grid.min()), float(grid.max())
    im = ax.imshow(
        grid,
        extent=(0, s, s, 0),
        cmap=OVERLAY_CMAP,
        alpha=OVERLAY_ALPHA,
        interpolation="nearest",
        vmin=lo,
        vmax=max(hi, lo + 1e-12),
    )
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(label)
    return im


def plot_input(
    image: np.ndarray, grid_size: int, path: str | os.PathLike, title: str | None = None
) -> Path:
    """(a) The preprocessed (de-normalised) input with the patch grid drawn on it."""
    s = image.shape[0]
    patch = s / grid_size
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    _show_image(ax, image)
    for i in range(1, grid_size):
        ax.axhline(i * patch, color="cyan", linewidth=0.6, alpha=0.8)
        ax.axvline(i * patch, color="cyan", linewidth=0.6, alpha=0.8)
    ax.set_title(
        title
        or f"Input after preprocessing: {s}x{s} px, {grid_size}x{grid_size} patches of {patch:g} px"
    )
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    return save_png(fig, path)


def plot_pos_embed_similarity(
    sim: np.ndarray, path: str | os.PathLike, title: str | None = None
) -> Path:
    """(b) A G x G grid of small G x G maps: tile (r, c) is the cosine similarity of
    patch (r, c)'s position embedding with every patch's.

    Drawn as one mosaic image with 1-cell gaps rather than G*G axes: the same
    picture, and seconds faster to render for 14 x 14 grids."""
    g = sim.shape[-1]
    step = g + 1
    mosaic = np.full((g * step - 1, g * step - 1), np.nan)
    for idx in range(g * g):
        r, c = divmod(idx, g)
        mosaic[r * step : r * step + g, c * step : c * step + g] = sim[idx]
    fig = Figure(figsize=(7, 6.2))
    ax = fig.subplots()
    im = ax.imshow(mosaic, cmap="viridis", vmin=-1.0, vmax=1.0, interpolation="nearest")
    centres = np.arange(g) * step + (g - 1) / 2
    every = max(1, math.ceil(g / 16))  # keep tick labels readable on large grids
    ax.set_xticks(centres[::every], [str(i) for i in range(0, g, every)])
    ax.set_yticks(centres[::every], [str(i) for i in range(0, g, every)])
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(
        title
        or f"Position embedding similarity ({g}x{g} patches, CLS excluded)\n"
        "tile (row, col): cosine of that patch's embedding with every patch's"
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("cosine similarity")
    return save_png(fig, path)


def plot_attention(
    image: np.ndarray,
    maps: np.ndarray,
    path: str | os.PathLike,
    heads: Sequence[int],
    title: str,
    query_patch: tuple[int, int] | None = None,
) -> Path:
    """(c) One panel per head: its (G, G) attention map over the image.

    ``query_patch``: (row, col) of the query token when it is a patch, outlined."""
    n = len(heads)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols, 3.2 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    patch = image.shape[0] / maps.shape[-1]
    for ax, head, grid in zip(axes, heads, maps, strict=False):
        _overlay(fig, ax, image, grid, "attention probability")
        ax.set_title(f"head {head}")
        if query_patch is not None:
            r, c = query_patch
            ax.add_patch(
                Rectangle((c * patch, r * patch), patch, patch, fill=False, ec="cyan", lw=1.5)
            )
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save_png(fig, path)


def plot_rollout(
    image: np.ndarray, rollout: np.ndarray, path: str | os.PathLike, title: str | None = None
) -> Path:
    """(d) Attention rollout across all layers, over the image, beside the plain image."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    _show_image(left, image)
    left.set_title("input")
    left.set_xticks([])
    left.set_yticks([])
    _overlay(fig, right, image, rollout, "rollout weight")
    right.set_title("rollout")
    fig.suptitle(title or "Attention rollout (Abnar & Zuidema, 2020) across all layers")
    return save_png(fig, path)
