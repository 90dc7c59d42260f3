"""Model families against their source libraries: timm, transformers, open_clip.

Each checkpoint is written locally by the source library with random weights (nothing
downloaded); ours must match the source's logits / embedding in fp32 to 1e-5 x the
output scale, and every hyper-parameter no tensor shows must come from metadata or be
refused (or, for a bare plain-ViT timm state dict, assumed with a warning).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from vit_deploy.checkpoints.load import load_model
from vit_deploy.config import get_preset
from vit_deploy.errors import (
    AmbiguousCheckpointError,
    CheckpointError,
    ParityError,
    UnsupportedArchitectureError,
)

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

REL_TOL = 1e-5


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (LayerScale, norms, zero-initialised heads included), so no
    part can be silently skipped by a loader and still match."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if p.ndim == 1 else 0.0))
    return module.eval()


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    diff = float((ours - theirs).abs().max())
    scale = float(theirs.abs().max())
    assert diff <= REL_TOL * scale, f"max |diff| {diff:.2e} > {REL_TOL} x scale {scale:.2f}"
    return diff / scale


def pixels(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# timm architecture -> model_args that keep it small (depth, and for DINOv2 the size)
TIMM_FAMILIES = {
    "vit_base_patch16_gap_224": {"depth": 2},  # 16 heads at width 768
    "vit_base_patch16_rpn_224": {"depth": 2},  # residual post-norm blocks
    "deit_tiny_patch16_224": {"depth": 2},
    "deit_tiny_distilled_patch16_224": {"depth": 2},
    "deit3_small_patch16_224": {"depth": 2},
    "vit_base_patch16_clip_224": {"depth": 2},
    "vit_base_patch16_clip_quickgelu_224": {"depth": 2},
    "vit_small_patch14_dinov2": {"depth": 2, "img_size": 70},
    "vit_small_patch14_reg4_dinov2": {"depth": 2, "img_size": 70},
    "vit_base_patch16_siglip_224": {"depth": 2},
}


def timm_hub_folder(tmp_path, arch: str, model_args: dict, num_classes=None):
    kwargs = dict(model_args, **({} if num_classes is None else {"num_classes": num_classes}))
    ref = randomize(timm.create_model(arch, pretrained=False, **kwargs))
    folder = tmp_path / arch
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()}, folder / "model.safetensors"
    )
    pre = dict(ref.pretrained_cfg)
    pre["input_size"] = [3, ref.patch_embed.img_size[0], ref.patch_embed.img_size[1]]
    meta = {
        "architecture": arch,
        "num_classes": ref.num_classes,
        "model_args": {k: v for k, v in model_args.items() if k != "img_size"},
        "pretrained_cfg": {
            k: v for k, v in pre.items() if isinstance(v, (int, float, str, list, tuple))
        },
    }
    (folder / "config.json").write_text(json.dumps(meta))
    return ref, folder


def timm_outputs(ref, x):
    with torch.no_grad():
        features = ref.forward_features(x)
        return ref.forward_head(features), ref.forward_head(features, pre_logits=True)


@pytest.mark.parametrize("arch", sorted(TIMM_FAMILIES))
def test_timm_hub_folder_matches_timm(tmp_path, arch):
    ref, folder = timm_hub_folder(tmp_path, arch, TIMM_FAMILIES[arch])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # metadata decides everything: no assumption warned
        ours = load_model(folder)
    assert ours.checkpoint_info["assumed"] == {}
    x = pixels(ours.config.img_size)
    logits, pre_logits = timm_outputs(ref, x)
    got_logits, got_embedding = ours.forward_all(x)
    if ours.config.proj_dim:  # timm keeps CLIP's projection as its head
        assert_close(got_embedding, logits)
    else:
        assert_close(got_embedding, pre_logits)
        if ours.config.num_classes:
            assert_close(got_logits, logits)
    assert ours.config.preprocess.mean == tuple(ref.pretrained_cfg["mean"])


def test_timm_gap_heads_come_from_the_architecture(tmp_path):
    _, folder = timm_hub_folder(tmp_path, "vit_base_patch16_gap_224", {"depth": 1})
    assert load_model(folder).config.num_heads == 16


def test_wrong_heads_pass_shapes_but_fail_source_parity(tmp_path):
    from vit_deploy.export.verify import parity_inputs, reference_outputs, source_parity

    _, folder = timm_hub_folder(tmp_path, "vit_base_patch16_gap_224", {"depth": 1})
    wrong = load_model(folder, num_heads=12)  # every shape still fits
    inputs = parity_inputs(wrong.config, samples=4)
    reference = reference_outputs(wrong, inputs.pixels, ["logits", "embedding"])
    with pytest.raises(ParityError, match="source parity failed"):
        source_parity(wrong, inputs, reference)
    right = load_model(folder)
    reference = reference_outputs(right, inputs.pixels, ["logits", "embedding"])
    section = source_parity(right, inputs, reference)
    assert section["passed"] and section["library"] == "timm"
    assert max(section["max_abs_diff_over_scale"].values()) <= REL_TOL


def test_timm_resampling_is_antialiased_like_timm(tmp_path):
    arch = "vit_small_patch14_dinov2"
    _, folder = timm_hub_folder(tmp_path, arch, {"depth": 1, "img_size": 70})
    ours = load_model(folder, img_size=112)
    ref = timm.create_model(arch, pretrained=False, depth=1, img_size=112)
    from safetensors.torch import load_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    ref.load_state_dict(checkpoint_filter_fn(load_file(folder / "model.safetensors"), ref))
    x = pixels(112)
    assert_close(ours.embed(x), timm_outputs(ref.eval(), x)[1])


def test_bare_timm_state_dict_of_a_plain_vit_warns_and_records(tmp_path):
    ref = randomize(timm.create_model("vit_base_patch16_gap_224", pretrained=False, depth=1))
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    with pytest.warns(UserWarning, match="assumed num_heads=12.*--num-heads"):
        ours = load_model(tmp_path / "w.pth")
    assert ours.checkpoint_info["assumed"]["num_heads"] == 12
    fixed = load_model(tmp_path / "w.pth", num_heads=16)
    assert "num_heads" not in fixed.checkpoint_info["assumed"]
    x = pixels(224)
    assert_close(fixed.embed(x), timm_outputs(ref, x)[1])


@pytest.mark.parametrize("arch", ["vit_base_patch16_clip_224", "vit_base_patch16_siglip_224"])
def test_bare_family_state_dict_is_refused_naming_the_option(tmp_path, arch):
    ref = randomize(timm.create_model(arch, pretrained=False, depth=1))
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    with pytest.raises(AmbiguousCheckpointError, match=f"--config NAME.*{arch}"):
        load_model(tmp_path / "w.pth")
    ours = load_model(tmp_path / "w.pth", config=arch)
    x = pixels(224)
    logits, pre_logits = timm_outputs(ref, x)
    assert_close(ours.embed(x), logits if ours.config.proj_dim else pre_logits)


@pytest.mark.parametrize(
    "arch, feature",
    [
        ("eva02_tiny_patch14_224", "RoPE"),
        ("beit_base_patch16_224", "relative position bias"),
        ("vit_relpos_base_patch16_224", "relative position bias"),
    ],
)
def test_unsupported_families_are_refused_by_feature(tmp_path, arch, feature):
    ref = timm.create_model(arch, pretrained=False, depth=1)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    with pytest.raises(UnsupportedArchitectureError, match=feature) as info:
        load_model(tmp_path / "w.pth")
    assert info.value.feature and info.value.architecture


def test_unsupported_architecture_name_in_a_hub_folder(tmp_path):
    ref, folder = timm_hub_folder(tmp_path, "vit_small_patch16_224", {"depth": 1})
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "architecture": "eva02_small_x"}))
    with pytest.raises(UnsupportedArchitectureError, match="RoPE.*EVA"):
        load_model(folder)


def test_mismatch_names_the_missing_feature(tmp_path):
    ref = randomize(timm.create_model("deit3_small_patch16_224", pretrained=False, depth=1))
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    exact = get_preset("deit_small_patch16_224", depth=1)  # a whole config: no LayerScale
    with pytest.raises(CheckpointError, match="features that differ: LayerScale"):
        load_model(tmp_path / "w.pth", config=exact)
    # a name only decides what shapes do not show: LayerScale comes from the tensors
    assert load_model(tmp_path / "w.pth", config="deit_small_patch16_224").config.init_values


# ---------------------------------------------------------------- Hugging Face

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)


def hf_folder(tmp_path, model, processor: dict | None = None):
    folder = tmp_path / type(model).__name__
    model.save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


HF_CASES = {
    "DeiTForImageClassificationWithTeacher": lambda: transformers.DeiTConfig(
        **TINY, intermediate_size=128, num_labels=5
    ),
    "DeiTForImageClassification": lambda: transformers.DeiTConfig(
        **TINY, intermediate_size=128, num_labels=5
    ),
    "CLIPVisionModel": lambda: transformers.CLIPVisionConfig(**TINY, intermediate_size=128),
    "CLIPVisionModelWithProjection": lambda: transformers.CLIPVisionConfig(
        **TINY, intermediate_size=128, projection_dim=24
    ),
    "Dinov2Model": lambda: transformers.Dinov2Config(**TINY, mlp_ratio=2),
    "Dinov2WithRegistersModel": lambda: transformers.Dinov2WithRegistersConfig(
        **TINY, mlp_ratio=2, num_register_tokens=3
    ),
    "SiglipVisionModel": lambda: transformers.SiglipVisionConfig(**TINY, intermediate_size=128),
}


def hf_reference(net, x):
    with torch.no_grad():
        out = net(pixel_values=x)
    if getattr(out, "image_embeds", None) is not None:
        return "embedding", out.image_embeds
    if getattr(out, "logits", None) is not None:
        return "logits", out.logits
    return "embedding", out.pooler_output


@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_hf_folder_matches_transformers(tmp_path, name):
    net = randomize(getattr(transformers, name)(HF_CASES[name]()))
    ours = load_model(hf_folder(tmp_path, net))
    x = pixels(32)
    kind, theirs = hf_reference(net, x)
    logits, embedding = ours.forward_all(x)
    assert_close(logits if kind == "logits" else embedding, theirs)
    assert ours.checkpoint_info["library"] == "transformers"


def test_hf_preprocessing_travels(tmp_path):
    net = randomize(transformers.Dinov2Model(transformers.Dinov2Config(**TINY, mlp_ratio=2)))
    processor = {
        "size": {"shortest_edge": 40},
        "crop_size": {"height": 24, "width": 24},
        "do_center_crop": True,
        "resample": 3,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    ours = load_model(hf_folder(tmp_path, net, processor))
    pre = ours.config.preprocess
    # DINOv2 runs at its processor's crop, positions resampled as transformers does
    assert ours.config.img_size == 24 and pre.img_size == 24 and pre.resize_size == 40
    assert pre.crop_mode == "center" and pre.interpolation == "bicubic"
    with torch.no_grad():
        theirs = net(pixel_values=pixels(24)).pooler_output
    assert_close(ours.embed(pixels(24)), theirs)
    siglip = randomize(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY)))
    squash = {"size": {"height": 32, "width": 32}, "resample": 3}
    pre = load_model(hf_folder(tmp_path, siglip, squash)).config.preprocess
    assert pre.crop_mode == "squash" and pre.resize_size == 32 and pre.mean == (0.5, 0.5, 0.5)


def test_hf_swiglu_dinov2_is_refused(tmp_path):
    net = transformers.Dinov2Model(transformers.Dinov2Config(**TINY, use_swiglu_ffn=True))
    with pytest.raises(UnsupportedArchitectureError, match="SwiGLU"):
        load_model(hf_folder(tmp_path, net))


# ---------------------------------------------------------------- open_clip


def open_clip_checkpoint(tmp_path, quick_gelu: bool):
    open_clip = pytest.importorskip("open_clip")
    model_cfg = {
        "embed_dim": 24,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1},
    }
    net = randomize(open_clip.CLIP(**model_cfg))
    folder = tmp_path / "open_clip"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(
        json.dumps(
            {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
        )
    )
    return net, folder


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_visual_tower_matches_encode_image(tmp_path, quick_gelu):
    net, folder = open_clip_checkpoint(tmp_path, quick_gelu)
    ours = load_model(folder)
    assert ours.config.act_layer == ("quick_gelu" if quick_gelu else "gelu")
    assert ours.config.preprocess.std == (0.25, 0.25, 0.25)
    x = pixels(32)
    with torch.no_grad():
        assert_close(ours.embed(x), net.encode_image(x))


def test_bare_open_clip_state_dict_needs_config(tmp_path):
    _, folder = open_clip_checkpoint(tmp_path, True)
    with pytest.raises(AmbiguousCheckpointError, match="quick-GELU.*--config NAME"):
        load_model(folder / "open_clip_pytorch_model.bin")


# ---------------------------------------------------------------- export through the gate


EXPORT_CASES = {
    "timm-clip": lambda tmp: timm_hub_folder(
        tmp, "vit_base_patch16_clip_224", {"depth": 1, "embed_dim": 64, "num_heads": 2}
    )[1],
    "timm-dinov2-reg": lambda tmp: timm_hub_folder(
        tmp, "vit_small_patch14_reg4_dinov2", {"depth": 1, "img_size": 42}
    )[1],
    "timm-siglip": lambda tmp: timm_hub_folder(
        tmp, "vit_base_patch16_siglip_224", {"depth": 1, "embed_dim": 64, "num_heads": 2}
    )[1],
    "hf-deit-distilled": lambda tmp: hf_folder(
        tmp,
        randomize(
            transformers.DeiTForImageClassificationWithTeacher(
                HF_CASES["DeiTForImageClassificationWithTeacher"]()
            )
        ),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_family_exports_through_the_gate(tmp_path, case, precision):
    from vit_deploy.export.onnx.pipeline import export_onnx_artifact
    from vit_deploy.export.options import OnnxExportOptions

    model = load_model(EXPORT_CASES[case](tmp_path))
    result = export_onnx_artifact(
        model, tmp_path / "artifact", OnnxExportOptions(precision=precision, verify_samples=8)
    )
    manifest = result.manifest
    assert manifest["parity"]["passed"]
    assert manifest["source_parity"]["passed"], manifest["source_parity"]
    assert manifest["export"]["checkpoint"]["library"] in ("timm", "transformers")
    assert manifest["fusion"]  # reported, whatever it found


def test_two_tower_clip_folder_loads_its_vision_tower(tmp_path):
    from vit_deploy.export.verify import parity_inputs, reference_outputs, source_parity

    text = transformers.CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    vision = transformers.CLIPVisionConfig(**TINY, intermediate_size=128)
    config = transformers.CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24
    )
    net = randomize(transformers.CLIPModel(config))
    ours = load_model(hf_folder(tmp_path, net))
    x = pixels(32)
    with torch.no_grad():
        theirs = net.get_image_features(pixel_values=x)
    theirs = getattr(theirs, "pooler_output", theirs)  # an output object in newer transformers
    assert_close(ours.embed(x), theirs)
    inputs = parity_inputs(ours.config, samples=2)
    section = source_parity(ours, inputs, reference_outputs(ours, inputs.pixels, ["embedding"]))
    assert section["skipped"] and "two-tower" in section["reason"]
