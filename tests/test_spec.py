"""The one model resolver: what each spelling names, its errors, and the recorded command
that rebuilds the same weights."""

from __future__ import annotations

import shlex

import pytest

from vit_deploy.checkpoints import save_model
from vit_deploy.checkpoints.spec import (
    ModelSpec,
    ModelSpecError,
    as_model,
    spec_of,
    weights_sha256,
)
from vit_deploy.cli import export as export_cli
from vit_deploy.cli.common import error_text
from vit_deploy.manifest import read_manifest
from vit_deploy.model import create_model


def test_each_spelling_names_one_kind(tmp_path):
    assert ModelSpec.parse(None).kind == "default"
    assert ModelSpec.parse("default").kind == "default"
    assert ModelSpec.parse("vit_tiny_patch16_224").kind == "preset"
    ckpt = tmp_path / "ckpt"
    save_model(create_model("vit_tiny_patch16_224", img_size=32, depth=1), ckpt)
    assert ModelSpec.parse(ckpt).kind == "checkpoint"
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text("{}")
    spec = ModelSpec.parse(art)
    assert spec.kind == "artifact"
    with pytest.raises(ModelSpecError, match="load_backend"):
        spec.load()


def test_hub_names_say_nothing_is_downloaded():
    with pytest.raises(ModelSpecError) as err:
        ModelSpec.parse("google/vit-base-patch16-224")
    text = str(err.value)
    assert "nothing is downloaded" in text and "--local-dir" in text
    assert "did you mean" not in text  # no random-weights preset offered for a hub name


def test_typos_get_the_close_preset_and_its_caveat():
    with pytest.raises(ModelSpecError, match=r"did you mean the preset 'vit_base_patch16_224' "):
        ModelSpec.parse("vit_base_patch16_244")


def test_errors_name_the_library_option_and_the_cli_shows_its_flag():
    with pytest.raises(ModelSpecError) as err:
        ModelSpec.parse(None, img_size=0)
    assert str(err.value).startswith("img_size: expected a positive int, got 0")
    assert error_text(err.value).startswith("--img-size: expected a positive int, got 0")
    with pytest.raises(ModelSpecError, match="multiple of the patch size 16"):
        ModelSpec.parse("vit_tiny_patch16_224", img_size=40).load()


def test_spec_round_trips_and_objects_are_not_reproducible():
    spec = ModelSpec.parse("vit_tiny_patch16_224", img_size=32, num_heads=3)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert spec.cli_args() == [
        "--model",
        "vit_tiny_patch16_224",
        "--img-size",
        "32",
        "--num-heads",
        "3",
    ]
    built = create_model("vit_tiny_patch16_224", img_size=32, depth=1)
    assert spec_of(built).kind == "object" and not spec_of(built).reproducible
    with pytest.raises(ModelSpecError, match="save_model"):
        spec_of(built).cli_args()
    assert as_model(built) is built
    with pytest.raises(ModelSpecError, match="got int"):
        as_model(3)


def test_loaded_model_carries_its_spec_and_presets_are_seeded():
    spec = ModelSpec.parse("vit_tiny_patch16_224", img_size=32)
    a, b = spec.load(), spec.load()
    assert a.spec == spec
    assert weights_sha256(a) == weights_sha256(b)  # same command, same weights


def _export(argv: list[str]) -> int:
    return export_cli.main(argv)


@pytest.mark.parametrize("which", ["default", "preset", "checkpoint"])
def test_recorded_command_rebuilds_the_same_weights(tmp_path, which):
    if which == "default":
        model_args = []
    elif which == "preset":
        model_args = ["--model", "vit_tiny_patch16_224", "--img-size", "32"]
    else:
        ckpt = tmp_path / "ckpt"
        save_model(create_model("vit_tiny_patch16_224", img_size=32, depth=2, seed=7), ckpt)
        model_args = ["--model", str(ckpt)]
    first = tmp_path / "first"
    fast = ["--fmt", "onnx", "--no-verify", "--optimize", "plain", "-q"]
    assert _export([*model_args, *fast, "--out", str(first)]) == 0
    recorded = read_manifest(first)["export"]
    assert recorded["model_spec"]["kind"] == which
    argv = shlex.split(recorded["command"])
    assert argv[0] == "vit-export" and argv[-2:] == ["--out", str(first)]
    second = tmp_path / "second"
    assert _export([*argv[1:-2], "--out", str(second), "-q"]) == 0
    again = read_manifest(second)["export"]
    assert again["weights_sha256"] == recorded["weights_sha256"]
    assert again["command"] == recorded["command"].replace(str(first), str(second))


def test_trt_rebuild_command_comes_from_the_spec():
    from vit_deploy.runtime.tensorrt.env import rebuild_command

    spec = ModelSpec.parse("vit_tiny_patch16_224", img_size=32)
    section = {
        "precision": "fp16",
        "profile": {"min": 1, "opt": 8, "max": 32},
        "build": {"model_spec": spec.to_dict(), "model_args": spec.cli_args(), "out": "a/trt"},
    }
    assert rebuild_command(section) == (
        "vit-export --model vit_tiny_patch16_224 --img-size 32 --fmt trt --precision fp16 "
        "--batch 1:8:32 --out a/trt"
    )
