"""The model on bad input, its three outputs, its attention paths and its config."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from vit_deploy.config import PRESETS, Preprocess, ViTConfig, get_preset
from vit_deploy.errors import (
    ConfigError,
    InputDTypeError,
    InputShapeError,
    KernelUnavailableError,
    NonFiniteInputError,
    UnknownPresetError,
)
from vit_deploy.model.vit import VisionTransformer, create_model

SMALL = ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5)


def run(model: torch.nn.Module, x: torch.Tensor, method: str = "forward") -> torch.Tensor:
    with torch.no_grad():
        out = getattr(model, method)(x)
    assert not torch.isnan(out).any(), f"{method} returned NaN"
    return out


@pytest.fixture
def model() -> VisionTransformer:
    return create_model(SMALL, seed=0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("h,w", [(48, 48), (32, 48)])
def test_wrong_image_size(model, h, w):
    with pytest.raises(InputShapeError) as err:
        model(torch.randn(1, 3, h, w))
    assert f"{h}x{w}" in str(err.value) and "32x32" in str(err.value)


def test_wrong_channel_count(model):
    with pytest.raises(InputShapeError, match="expected 3 channels, got 1"):
        model(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 3, 32, 32)])
def test_wrong_rank(model, shape):
    with pytest.raises(InputShapeError, match=f"4-D.*got {len(shape)}-D"):
        model(torch.randn(shape))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_dtype(model, dtype):
    with pytest.raises(InputDTypeError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=dtype))


def test_not_a_tensor(model):
    with pytest.raises(InputDTypeError, match="torch.Tensor"):
        model(torch.zeros(1, 3, 32, 32).numpy())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input(bad):
    x = torch.randn(2, 3, 32, 32)
    x[1, 2, 5, 7] = bad
    checked = create_model(SMALL, check_finite=True)
    with pytest.raises(NonFiniteInputError, match="NaN or Inf"):
        checked(x)
    with torch.no_grad():
        create_model(SMALL, check_finite=False)(x)  # off by default: no error, no check cost
    run(checked, x[:1])  # the clean image passes the check


def test_unknown_preset():
    with pytest.raises(UnknownPresetError, match="vit_tiny_patch16_224"):
        get_preset("vit_gigantic_patch99_224")
    with pytest.raises(UnknownPresetError):
        create_model("vit_gigantic_patch99_224")


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"num_heads": 5}, "divisible by num_heads"),
        ({"img_size": 30}, "multiple of patch_size"),
        ({"class_token": False}, "needs class_token=True"),
        ({"global_pool": "max"}, "global_pool: expected one of"),
        ({"num_classes": -1}, "num_classes: expected >= 0"),
        ({"depth": 0}, "depth: expected a positive int"),
        ({"embed_dim": 64.0}, "embed_dim: expected a positive int"),
        ({"labels": ("a", "b")}, "labels: expected 5 names, got 2"),
    ],
)
def test_invalid_configs(changes, message):
    with pytest.raises(ConfigError, match=message):
        ViTConfig(**{**SMALL.to_dict(), "preprocess": SMALL.preprocess, **changes})


def test_invalid_config_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        ViTConfig(depth=0, num_heads=-1, num_classes=-3)
    for field in ("depth", "num_heads", "num_classes"):
        assert field in str(err.value)


def test_invalid_preprocess_and_unknown_fields():
    with pytest.raises(ConfigError, match="interpolation"):
        Preprocess(interpolation="lanczos")
    with pytest.raises(ConfigError, match="crop_pct"):
        Preprocess(crop_pct=0.0)
    with pytest.raises(ConfigError, match="unknown ViTConfig fields: \\['heads'\\]"):
        ViTConfig.from_dict({"heads": 4})


def test_unknown_attention_impl():
    with pytest.raises(ConfigError, match="attention: expected one of"):
        create_model(SMALL, attention="flash")
    with pytest.raises(ConfigError, match="attention: expected one of"):
        VisionTransformer(SMALL, attention="flash")


# ---------------------------------------------------------------- attention paths


def _triton_model(weights: dict) -> VisionTransformer:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("attention='triton' needs Triton, which is not installed")
    try:
        model = create_model(SMALL, attention="triton", seed=None)
    except ConfigError as exc:  # the kernel module is missing or does not import
        pytest.skip(f"fused kernel unavailable: {exc}")
    model.load_state_dict(weights)
    return model


@pytest.mark.parametrize("impl", ["sdpa", "triton"])
def test_attention_paths_agree(model, impl):
    x = torch.randn(2, 3, 32, 32)  # 17 tokens: not a multiple of any block size
    if impl == "triton":
        other = _triton_model(model.state_dict())
    else:
        other = create_model(SMALL, attention=impl, seed=None)
        other.load_state_dict(model.state_dict())
    reference = run(model, x, "forward_features")
    try:
        got = run(other, x, "forward_features")
    except KernelUnavailableError as exc:
        pytest.skip(f"fused kernel cannot run here: {exc}")
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)  # fp32
    torch.testing.assert_close(run(other, x), run(model, x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    "cfg",
    [SMALL, SMALL.replace(global_pool="avg"), SMALL.replace(global_pool="avg", class_token=False)],
    ids=["token", "avg", "avg-no-cls"],
)
def test_output_shapes(cfg):
    model = create_model(cfg)
    x = torch.randn(3, 3, 32, 32)
    assert run(model, x, "forward_features").shape == (3, cfg.seq_len, 64)
    assert run(model, x, "embed").shape == (3, 64)
    assert run(model, x).shape == (3, 5)
    with torch.no_grad():
        logits, emb = model.forward_all(x)
    torch.testing.assert_close(logits, run(model, x), rtol=0, atol=0)
    torch.testing.assert_close(emb, run(model, x, "embed"), rtol=0, atol=0)


def test_no_head_returns_embedding():
    model = create_model(SMALL, num_classes=0)
    x = torch.randn(2, 3, 32, 32)
    out = run(model, x)
    assert out.shape == (2, 64)
    torch.testing.assert_close(out, run(model, x, "embed"), rtol=0, atol=0)


def test_attention_maps_are_distributions(model):
    maps = model.attention_maps(torch.randn(2, 3, 32, 32))
    assert len(maps) == SMALL.depth
    for probs in maps:
        assert probs.shape == (2, SMALL.num_heads, SMALL.seq_len, SMALL.seq_len)
        assert not torch.isnan(probs).any()
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 17))


def test_seeded_init_is_reproducible():
    a, b = create_model(SMALL, seed=3), create_model(SMALL, seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(create_model(SMALL, seed=4).pos_embed, a.pos_embed)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trip(name):
    cfg = get_preset(name, labels=tuple(f"class {i}" for i in range(1000)))
    again = ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.labels == cfg.labels and again.preprocess == cfg.preprocess


def test_replace_img_size_keeps_preprocess_in_step():
    cfg = get_preset("vit_base_patch16_224").replace(img_size=384)
    assert cfg.preprocess.img_size == 384 and cfg.preprocess.crop_pct == 0.9
    assert cfg.grid_size == 24 and cfg.seq_len == 577


def test_flops_per_image():
    # ViT-B/16 at 224: about 17.6 G multiply-adds per image (the paper, timm, fvcore)
    flops = get_preset("vit_base_patch16_224").flops_per_image()
    assert abs(flops - 2 * 17.6e9) / (2 * 17.6e9) < 0.03, flops
    # sequence length grows 2.9x at 384; attention grows faster than linearly
    ratio = get_preset("vit_base_patch16_384").flops_per_image() / flops
    assert 2.9 < ratio < 3.5, ratio
