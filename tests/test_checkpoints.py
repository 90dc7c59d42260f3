"""Checkpoint import, checked against implementations nobody here wrote.

Each foreign layout is written by its own library (timm, transformers) or, for
the Google .npz, by the inverse of our mapping and then read back by timm's own
.npz loader too; the logits of the loaded model are compared with theirs.
Models keep real widths but few blocks, so the file runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vit_deploy.checkpoints.load as checkpoints
from vit_deploy.checkpoints.load import load_model, resample_pos_embed, save_model
from vit_deploy.config import ViTConfig, get_preset
from vit_deploy.errors import CheckpointError, CheckpointMismatchError
from vit_deploy.model.vit import create_model

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

REL_TOL = 1e-5  # fp32: max |ours - theirs| relative to the largest logit


def assert_matches(theirs: torch.Tensor, ours: torch.Tensor, rel: float = REL_TOL) -> None:
    assert ours.shape == theirs.shape
    assert not torch.isnan(ours).any() and not torch.isnan(theirs).any()
    diff, scale = (ours - theirs).abs().max().item(), theirs.abs().max().item()
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel} x max |logit| {scale:.3g}"


def timm_model(name: str, **kwargs) -> torch.nn.Module:
    model = timm.create_model(name, **kwargs).eval()
    if isinstance(model.head, torch.nn.Linear):  # make the head informative, not near zero
        torch.nn.init.normal_(model.head.weight, std=0.05)
        torch.nn.init.normal_(model.head.bias, std=0.05)
    return model


def image(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


@torch.no_grad()
def check_against(reference, ours, size: int) -> None:
    x = image(size, batch=1 if size >= 224 else 2)  # one full-size image: CI has 2 cores
    assert_matches(reference(x), ours(x))


# ---------------------------------------------------------------- timm state dicts

TIMM_CASES = [
    ("vit_tiny_patch16_224", {"depth": 2}, ".pth"),
    ("vit_small_patch32_224", {"depth": 2}, ".safetensors"),
    ("vit_base_patch16_224", {"depth": 2}, ".pth"),
    ("vit_base_patch16_384", {"depth": 1}, ".safetensors"),
    ("vit_small_patch16_224", {"depth": 2, "global_pool": "avg", "class_token": False}, ".bin"),
    ("vit_small_patch16_224", {"depth": 1, "global_pool": "avg"}, ".pt"),  # CLS kept, mean pool
    ("vit_small_patch16_224", {"depth": 1, "no_embed_class": True}, ".pth"),
]


@pytest.mark.parametrize("name,kwargs,suffix", TIMM_CASES, ids=lambda c: str(c))
def test_timm_state_dict_matches_timm(tmp_path, name, kwargs, suffix):
    ref = timm_model(name, **kwargs)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    else:
        torch.save(ref.state_dict(), path)
    ours = load_model(path)
    cfg = ours.config
    assert not ours.training
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (
        ref.embed_dim,
        len(ref.blocks),
        ref.blocks[0].attn.num_heads,
    )
    assert cfg.img_size == ref.patch_embed.img_size[0]
    assert cfg.global_pool == kwargs.get("global_pool", "token")
    check_against(ref, ours, cfg.img_size)


def test_timm_training_checkpoint_wrappers(tmp_path):
    ref = timm_model("vit_tiny_patch16_224", depth=1)
    wrapped = {
        "epoch": 3,
        "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()},
        "optimizer": {"lr": 0.1},
    }
    torch.save(wrapped, tmp_path / "train.pth.tar.pt")
    torch.save({"model": ref.state_dict()}, tmp_path / "model.pt")
    for path in (tmp_path / "train.pth.tar.pt", tmp_path / "model.pt"):
        check_against(ref, load_model(path), 224)


def test_half_precision_file_loads_as_fp32(tmp_path):
    ref = timm_model("vit_tiny_patch16_224", depth=1)
    torch.save({k: v.half() for k, v in ref.state_dict().items()}, tmp_path / "fp16.pth")
    ours = load_model(tmp_path / "fp16.pth")
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    check_against(ref.half().float(), ours, 224)  # the reference with the same rounded weights


def test_timm_hub_folder(tmp_path):
    from timm.models._hub import save_for_hf

    ref = timm_model("vit_small_patch16_224", depth=1, num_classes=3)
    save_for_hf(
        ref,
        str(tmp_path),
        model_config={"label_names": ["cat", "dog", "eel"]},
        safe_serialization=True,
    )
    ours = load_model(tmp_path)
    assert ours.config.labels == ("cat", "dog", "eel")
    assert ours.config.preprocess.interpolation == ref.pretrained_cfg["interpolation"]
    assert ours.config.preprocess.crop_pct == ref.pretrained_cfg["crop_pct"]
    check_against(ref, ours, 224)


def test_config_argument_gives_num_heads(tmp_path):
    # 512 wide with 4 heads: the shapes alone would suggest 8
    ref = timm_model("vit_small_patch16_224", depth=1, embed_dim=512, num_heads=4)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    with pytest.warns(UserWarning, match="num_heads"):
        guessed = load_model(tmp_path / "w.pth")
    assert guessed.config.num_heads == 8
    given = get_preset("vit_small_patch16_224", depth=1, embed_dim=512, num_heads=4)
    ours = load_model(tmp_path / "w.pth", config=given)
    check_against(ref, ours, 224)


def test_preset_name_as_config(tmp_path):
    ref = timm_model("vit_tiny_patch16_224", depth=1)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="embed_dim 768 \\(the checkpoint: 192\\)"):
        load_model(tmp_path / "w.pth", config="vit_base_patch16_224")
    ours = load_model(tmp_path / "w.pth", config=get_preset("vit_tiny_patch16_224", depth=1))
    assert ours.config == get_preset("vit_tiny_patch16_224", depth=1)
    check_against(ref, ours, 224)


def test_num_classes_override(tmp_path):
    ref = timm_model("vit_tiny_patch16_224", depth=1)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    x = image(224, batch=1)
    headless = load_model(tmp_path / "w.pth", num_classes=0)
    with torch.no_grad():
        assert_matches(ref.forward_head(ref.forward_features(x), pre_logits=True), headless(x))
    with pytest.warns(UserWarning, match="randomly initialised"):
        fresh = load_model(tmp_path / "w.pth", num_classes=7)
    with torch.no_grad():
        assert fresh(x).shape == (1, 7)
        assert_matches(headless(x), fresh.embed(x))


# ---------------------------------------------------------------- position embedding


@pytest.mark.parametrize("new_grid", [7, 20, (24, 24)])
def test_resample_matches_timm(new_grid):
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 14 * 14, 64)
    size = [new_grid] * 2 if isinstance(new_grid, int) else list(new_grid)
    theirs = resample_abs_pos_embed(
        pos, new_size=size, num_prefix_tokens=1, interpolation="bicubic", antialias=False
    )
    ours = resample_pos_embed(pos, new_grid, num_prefix_tokens=1)
    assert torch.equal(ours[:, :1], pos[:, :1])  # class position kept
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_resample_same_grid_is_identity():
    pos = torch.randn(1, 1 + 14 * 14, 32)
    assert torch.equal(resample_pos_embed(pos, 14, num_prefix_tokens=1), pos)
    no_cls = torch.randn(1, 49, 32)
    assert torch.equal(resample_pos_embed(no_cls, (7, 7), num_prefix_tokens=0), no_cls)


def test_load_at_new_resolution_matches_timm(tmp_path):
    from timm.models.vision_transformer import checkpoint_filter_fn

    src = timm_model("vit_small_patch16_224", depth=1)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    # timm's own loader resamples the checkpoint for its model at the new size, by default
    # antialiased (PIL's bicubic kernel, a=-0.5, even when upsampling): a timm checkpoint
    # follows timm
    ref = timm_model("vit_small_patch16_224", depth=1, img_size=320)
    ref.load_state_dict(checkpoint_filter_fn(src.state_dict(), ref))
    ours = load_model(tmp_path / "w.pth", img_size=320, num_classes=1000)  # same head kept
    assert ours.config.img_size == 320 and ours.config.preprocess.img_size == 320
    check_against(ref, ours, 320)
    # our own format resamples as Hugging Face does (plain bicubic, a=-0.75): a real
    # difference (up to ~0.1 in logits), which is why each source keeps its own rule
    plain = timm_model("vit_small_patch16_224", depth=1, img_size=320)
    plain.load_state_dict(checkpoint_filter_fn(src.state_dict(), plain, antialias=False))
    native = load_model(save_model(load_model(tmp_path / "w.pth"), tmp_path / "ckpt"), img_size=320)
    check_against(plain, native, 320)
    with pytest.raises(AssertionError):
        check_against(ref, native, 320)


# ---------------------------------------------------------------- Hugging Face


def hf_config(**overrides):
    kwargs = dict(
        hidden_size=192,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=64,
        patch_size=16,
        num_labels=4,
        id2label={0: "ant", 1: "bee", 2: "cat", 3: "dog"},
        label2id={"ant": 0, "bee": 1, "cat": 2, "dog": 3},
    )
    return transformers.ViTConfig(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def hf_classifier():
    torch.manual_seed(1)
    model = transformers.ViTForImageClassification(hf_config()).eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.05)
    return model


def hf_logits(model, x, **kwargs):
    with torch.no_grad():
        return model(pixel_values=x, **kwargs).logits


def test_hf_classifier_safetensors(tmp_path, hf_classifier):
    hf_classifier.save_pretrained(tmp_path)
    processor = transformers.ViTImageProcessor(
        size={"height": 64, "width": 64}, resample=3, image_mean=[0.4, 0.5, 0.6]
    )
    processor.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    cfg = ours.config
    assert cfg.labels == ("ant", "bee", "cat", "dog")
    assert cfg.norm_eps == 1e-12  # HF's default, kept
    assert cfg.preprocess.interpolation == "bicubic" and cfg.preprocess.crop_pct == 1.0
    assert cfg.preprocess.mean == (0.4, 0.5, 0.6)
    x = image(64)
    with torch.no_grad():
        assert_matches(hf_logits(hf_classifier, x), ours(x))


def test_hf_classifier_pytorch_model_bin(tmp_path, hf_classifier):
    hf_classifier.save_pretrained(tmp_path)
    # the hub's pytorch_model.bin holds the same on-disk names as model.safetensors
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    torch.save(on_disk, tmp_path / "pytorch_model.bin")
    ours = load_model(tmp_path)
    assert ours.config.preprocess.interpolation == "bilinear"  # HF's default processor
    x = image(64)
    with torch.no_grad():
        assert_matches(hf_logits(hf_classifier, x), ours(x))
    # transformers 5 names its modules differently in memory (q_proj, layers.N): also read
    torch.save(hf_classifier.state_dict(), tmp_path / "pytorch_model.bin")
    with torch.no_grad():
        assert_matches(hf_logits(hf_classifier, x), load_model(tmp_path)(x))


def test_hf_vit_model_without_head(tmp_path):
    torch.manual_seed(2)
    hf = transformers.ViTModel(hf_config(num_labels=2, id2label=None, label2id=None)).eval()
    hf.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="pooler"):
        ours = load_model(tmp_path)
    assert ours.config.num_classes == 0 and ours.config.labels == ()
    x = image(64)
    with torch.no_grad():
        tokens = hf(pixel_values=x).last_hidden_state
        assert_matches(tokens, ours.forward_features(x))
        assert_matches(tokens[:, 0], ours.embed(x))
        assert_matches(tokens[:, 0], ours(x))


def test_hf_odd_mlp_width(tmp_path):
    # 120 / 88 is a ratio that int(88 * ratio) truncates to 119 unless nudged
    cfg = hf_config(hidden_size=88, num_attention_heads=2, intermediate_size=120, image_size=32)
    hf = transformers.ViTForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert ours.blocks[0].mlp.fc1.out_features == 120
    x = image(32)
    with torch.no_grad():
        assert_matches(hf_logits(hf, x), ours(x))


def test_hf_resampled_matches_interpolate_pos_encoding(tmp_path, hf_classifier):
    hf_classifier.save_pretrained(tmp_path)
    ours = load_model(tmp_path, img_size=96)
    x = image(96)
    with torch.no_grad():
        assert_matches(hf_logits(hf_classifier, x, interpolate_pos_encoding=True), ours(x))


def test_hf_unsupported_activation(tmp_path, hf_classifier):
    hf_classifier.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match="hidden_act.*'relu'"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**meta, "model_type": "swin"}))
    with pytest.raises(CheckpointError, match="model_type in .*got 'swin'"):
        load_model(tmp_path)


# ---------------------------------------------------------------- Google .npz


def to_google_npz(model, big_vision: bool = False) -> dict[str, np.ndarray]:
    """timm weights in the JAX release layout (the inverse of what we read)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim, heads = model.embed_dim, model.blocks[0].attn.num_heads
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": sd["patch_embed.proj.bias"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    if "cls_token" in sd:
        out["cls"] = sd["cls_token"]
    pos = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    out[pos] = sd["pos_embed"]
    mha, ln2, mlp = ("0", "1", "0") if big_vision else ("1", "2", "3")
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        att = f"{p}MultiHeadDotProductAttention_{mha}/"
        for j, name in enumerate(("query", "key", "value")):
            w = sd[b + "attn.qkv.weight"][j * dim : (j + 1) * dim]  # (out, in)
            out[f"{att}{name}/kernel"] = w.T.reshape(dim, heads, dim // heads)
            out[f"{att}{name}/bias"] = sd[b + "attn.qkv.bias"][j * dim : (j + 1) * dim].reshape(
                heads, -1
            )
        out[f"{att}out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, dim // heads, dim)
        out[f"{att}out/bias"] = sd[b + "attn.proj.bias"]
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", f"LayerNorm_{ln2}")):
            out[f"{p}{theirs}/scale"] = sd[b + ours + ".weight"]
            out[f"{p}{theirs}/bias"] = sd[b + ours + ".bias"]
        for r in range(2):
            out[f"{p}MlpBlock_{mlp}/Dense_{r}/kernel"] = sd[f"{b}mlp.fc{r + 1}.weight"].T
            out[f"{p}MlpBlock_{mlp}/Dense_{r}/bias"] = sd[f"{b}mlp.fc{r + 1}.bias"]
    return out


def test_google_npz_matches_timm(tmp_path):
    src = timm_model("vit_small_patch16_224", depth=2)
    np.savez(tmp_path / "ViT-S_16.npz", **to_google_npz(src))
    # timm's own .npz loader reads the file we wrote: the layout is the real one
    ref = timm_model("vit_small_patch16_224", depth=2)
    ref.load_pretrained(str(tmp_path / "ViT-S_16.npz"))
    ours = load_model(tmp_path / "ViT-S_16.npz")
    assert ours.config.num_heads == 6 and ours.config.norm_eps == 1e-6
    check_against(src, ref, 224)
    check_against(ref, ours, 224)


def test_big_vision_npz_gap_model(tmp_path):
    # big_vision naming; no class token: normalise every token, then average
    src = timm_model(
        "vit_small_patch16_224", depth=1, class_token=False, global_pool="avg", fc_norm=False
    )
    arrays = {f"params/{k}": v for k, v in to_google_npz(src, big_vision=True).items()}
    np.savez(tmp_path / "bv.npz", **arrays)
    ref = timm_model(
        "vit_small_patch16_224", depth=1, class_token=False, global_pool="avg", fc_norm=False
    )
    ref.load_pretrained(str(tmp_path / "bv.npz"))
    ours = load_model(tmp_path / "bv.npz")
    assert ours.config.global_pool == "avg" and not ours.config.use_fc_norm
    check_against(src, ref, 224)
    check_against(ref, ours, 224)


def test_npz_pre_logits_and_missing(tmp_path):
    arrays = to_google_npz(timm_model("vit_small_patch16_224", depth=2))
    np.savez(tmp_path / "rep.npz", **arrays, **{"pre_logits/kernel": np.zeros((384, 384))})
    with pytest.raises(CheckpointError, match="representation layer"):
        load_model(tmp_path / "rep.npz")
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
    del arrays["Transformer/encoderblock_0/LayerNorm_2/scale"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(tmp_path / "missing.npz")
    assert err.value.missing == [
        "Transformer/encoderblock_0/LayerNorm_2/scale",
        "Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias",
    ]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name",
    ["google/vit-base-patch16-224", "timm/vit_base_patch16_224.augreg_in21k", "hf-hub:timm/x"],
)
def test_hub_names_are_not_downloaded(name):
    with pytest.raises(CheckpointError, match="nothing is downloaded.*local path"):
        load_model(name)


def test_missing_path(tmp_path):
    with pytest.raises(
        CheckpointError, match="no such file.*local checkpoint.*nothing is downloaded"
    ):
        load_model(tmp_path / "nope.pth")


@pytest.fixture(scope="module")
def tiny_state():
    return timm_model("vit_tiny_patch16_224", depth=1).state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz", ".bin"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_files(tmp_path, tiny_state, suffix, damage):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    elif suffix == ".npz":
        np.savez(path, **{k.replace(".", "/"): v.numpy() for k, v in tiny_state.items()})
    else:
        torch.save(tiny_state, path)
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 8, "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(CheckpointError, match=r"w\.\w+: expected .*could not read") as err:
        load_model(path)
    assert not isinstance(err.value, CheckpointMismatchError)


def test_python_objects_are_not_unpickled(tmp_path, tiny_state):
    torch.save({"state_dict": tiny_state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="argparse.Namespace.*state_dict"):
        load_model(tmp_path / "t.pth")


def test_unknown_files_and_folders(tmp_path, tiny_state):
    (tmp_path / "model.onnx").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="expected a checkpoint file ending in"):
        load_model(tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="non-tensor entries: weights"):
        load_model(tmp_path / "odd.pth")


def test_mismatch_lists_everything(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state["blocks.0.mlp.fc2.bias"]
    state["blocks.0.ls1.gamma"] = torch.ones(192)
    torch.save(state, tmp_path / "w.pth")
    cfg = get_preset("vit_tiny_patch16_224", depth=1, num_classes=10)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(tmp_path / "w.pth", config=cfg)
    e = err.value
    assert e.missing == ["blocks.0.mlp.fc2.bias"]
    assert e.unexpected == ["blocks.0.ls1.gamma"]
    assert [name for name, _, _ in e.wrong_shape] == ["head.bias", "head.weight"]
    assert "w.pth" in str(e) and "expected (10, 192), got (1000, 192)" in str(e)


# ---------------------------------------------------------------- our format


def test_native_round_trip_is_atomic(tmp_path):
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=3)
    model = create_model(cfg.replace(labels=("a", "b", "c")), seed=5)
    target = save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(target, attention="sdpa", check_finite=True)
    assert loaded.config == model.config and loaded.config.labels == ("a", "b", "c")
    assert loaded.config.preprocess == model.config.preprocess
    assert loaded.attention == "sdpa" and loaded.check_finite
    x = image(32)
    with torch.no_grad():
        assert_matches(model(x), loaded(x))
    # replacing a checkpoint also leaves nothing behind
    save_model(create_model(cfg, seed=6), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with torch.no_grad():
        assert not torch.equal(load_model(target)(x), model(x))


def test_native_save_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", broken)
    model = create_model(ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2))
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_native_refuses_to_replace_other_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    model = create_model(ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2))
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_model(model, tmp_path)
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_model(model, tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_native_bad_format_and_config(tmp_path):
    model = create_model(ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2))
    target = save_model(model, tmp_path / "ckpt")
    meta = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**meta, "format": "vit_deploy.checkpoint/2"}))
    with pytest.raises(CheckpointError, match="newer vit-deploy"):
        load_model(target)
    (target / "config.json").write_text(json.dumps({**meta, "depth": -1}))
    with pytest.raises(CheckpointError, match="config.json: expected a valid ViTConfig"):
        load_model(target)
    (target / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="expected JSON"):
        load_model(target)
