"""What a checkpoint's tensor names say about its architecture, in words.

Two uses: refusing families this ViT cannot compute exactly (with the feature named and
the architecture it comes from), and explaining a shape mismatch by the features the
unexpected or missing tensors belong to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vit_deploy.errors import UnsupportedArchitectureError

# (tensor-name pattern, the feature in words, where it comes from): never loaded
UNSUPPORTED = (
    (r"relative_position_bias_table|relative_position_index", "relative position bias", "BEiT"),
    (r"\.attn\.rel_pos\.", "relative position bias (an MLP of offsets)", "timm vit_relpos_*"),
    (r"(^|\.)rope\.|freqs_(cos|sin)", "rotary position embedding (RoPE)", "EVA-02 / timm *_rope_*"),
    (
        r"\.attn\.[qv]_bias$",
        "EVA/BEiT attention (separate q/v biases; EVA-02 adds RoPE)",
        "timm Eva / Beit",
    ),
    (r"\.mlp\.(fc1_g|fc1_x|w12|w3)\.|\.mlp\.weights_(in|out)", "SwiGLU MLP", "EVA-02 / DINOv2-g"),
    (r"\.attn\.(q_norm|k_norm)\.", "query/key normalisation (qk_norm)", "timm qk_norm ViTs"),
    (r"\.(attn|mlp)\.norm\.", "a norm inside attention or MLP", "timm scale_*_norm ViTs"),
    (r"\.gamma_[12]$", "BEiT-style layer scale", "timm Beit / Eva"),
    (r"^attn_pool\.(q_norm|k_norm|pos_embed)", "a MAP head with qk-norm or positions", "timm"),
)
# timm architecture name -> (feature, family) for families whose tensors look like a ViT's
UNSUPPORTED_NAMES = (
    (r"^eva", "rotary position embedding (RoPE) and SwiGLU", "EVA / EVA-02"),
    (r"^beit", "relative position bias", "BEiT"),
    (r"rope", "rotary position embedding (RoPE)", "timm *_rope_*"),
    (r"relpos", "relative position bias", "timm vit_relpos_*"),
    (r"_swiglu|_srelpos", "SwiGLU MLP / shared relative positions", "timm"),
)
# tensor-name pattern -> the ViTConfig feature it belongs to (for mismatch messages)
FEATURES = (
    (r"^norm_pre\.", "pre-norm before the blocks (pre_norm, CLIP)"),
    (r"^patch_embed\.proj\.bias$", "patch-embedding bias (patch_bias)"),
    (r"\.ls[12]\.gamma$", "LayerScale (init_values; DINOv2, DeiT III)"),
    (r"^reg_token$", "register tokens (reg_tokens, DINOv2 with registers)"),
    (r"^dist_token$|^head_dist\.", "distillation token and head (distilled, DeiT)"),
    (r"^attn_pool\.", "attention-pool head (global_pool='map', SigLIP)"),
    (r"^fc_norm\.", "norm after pooling (fc_norm)"),
    (r"^cls_token$", "class token (class_token)"),
    (r"^proj\.weight$", "image projection (proj_dim, CLIP)"),
    (r"^head\.", "classification head (num_classes)"),
    (r"\.qkv\.bias$", "qkv bias (qkv_bias)"),
)


def refuse_unsupported(names: Iterable[str], source: str, architecture: str = "") -> None:
    """UnsupportedArchitectureError when a tensor name or the architecture name shows a
    feature with no exact counterpart here."""
    names = list(names)
    for pattern, feature, family in UNSUPPORTED_NAMES:
        if architecture and re.search(pattern, architecture):
            raise UnsupportedArchitectureError(feature, f"{family}: {architecture}", source)
    for pattern, feature, family in UNSUPPORTED:
        hits = [n for n in names if re.search(pattern, n)]
        if hits:
            where = f"{family}: {architecture}" if architecture else family
            raise UnsupportedArchitectureError(feature, where, source, evidence=hits[0])


def describe(names: Iterable[str]) -> list[str]:
    """The features a list of tensor names belongs to, once each, in table order."""
    names = list(names)
    return [feature for pattern, feature in FEATURES if any(re.search(pattern, n) for n in names)]
