"""vit-export --fmt triton: the written config.pbtxt parsed by Triton's own model-config
protobuf (tritonclient ships it), checked against the artifact's manifest and profile."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from embed_helpers import tiny_artifact
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from vit_deploy.cli.export import main as export_main
from vit_deploy.embed.embedder import Embedder
from vit_deploy.errors import ArtifactError, ConfigError
from vit_deploy.export.triton import TritonOptions, write_triton_model
from vit_deploy.manifest import read_manifest, write_manifest

MC = model_config_pb2.ModelConfig


def parse_config(model_dir) -> model_config_pb2.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), MC())


def leftovers(repo) -> list[str]:
    return sorted(p.name for p in repo.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


def fake_trt(artifact, tmp_path, profile: dict, recorded: dict | None = None):
    """An artifact shaped like vit-export --fmt trt's (the bytes are not a real engine:
    the repository writer only copies and describes the file)."""
    out = tmp_path / "engine-art"
    out.mkdir()
    manifest = read_manifest(artifact)
    shutil.copyfile(artifact / "model.onnx", out / "model.engine")
    shutil.copyfile(artifact / "model.onnx", out / "model.onnx")
    manifest["artifact"] = {**manifest["artifact"], "format": "trt", "file": "model.engine"}
    manifest["artifact"]["extra_files"] = [dict(manifest["artifact"], file="model.onnx")]
    manifest["engine"] = {"profile": profile}
    manifest["batch_profile"] = recorded or profile
    write_manifest(out, manifest)
    return out


def test_onnx_config_matches_manifest(artifact, tmp_path):
    manifest = read_manifest(artifact)
    model = write_triton_model(artifact, tmp_path / "repo", TritonOptions(name="vit", instances=2))
    cfg = parse_config(model.directory)
    assert cfg.name == "vit" and model.directory.name == "vit"
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == manifest["batch_profile"]["max"]
    (inp,) = cfg.input
    assert inp.name == "pixels" and inp.data_type == model_config_pb2.TYPE_FP32
    assert list(inp.dims) == manifest["inputs"][0]["shape"][1:]  # no batch axis
    want = {o["name"]: o["shape"][1:] for o in manifest["outputs"]}
    assert {o.name: list(o.dims) for o in cfg.output} == want
    prof = manifest["batch_profile"]
    assert list(cfg.dynamic_batching.preferred_batch_size) == sorted({prof["opt"], prof["max"]})
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    (group,) = cfg.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU and group.count == 2
    assert (model.directory / "1" / "model.onnx").read_bytes() == (
        artifact / "model.onnx"
    ).read_bytes()
    assert leftovers(tmp_path / "repo") == []


def test_version_dir_is_a_loadable_artifact(artifact, tmp_path):
    model = write_triton_model(artifact, tmp_path / "repo", TritonOptions(name="vit"))
    triton_manifest = json.loads((model.directory / "1" / "manifest.json").read_text())
    assert triton_manifest["triton"]["max_batch_size"] == 32
    assert triton_manifest["preprocess"] == read_manifest(artifact)["preprocess"]
    pixels = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    a = Embedder.from_artifact(artifact).embed_pixels(pixels)
    b = Embedder.from_artifact(model.directory / "1").embed_pixels(pixels)
    assert not np.isnan(b).any() and np.array_equal(a, b)


def test_max_batch_never_above_profile(artifact, tmp_path):
    repo = tmp_path / "repo"
    with pytest.raises(ConfigError, match=r"max_batch: expected 1\.\.32 .* got 64"):
        write_triton_model(artifact, repo, TritonOptions(name="vit", max_batch=64))
    assert not (repo / "vit").exists()
    model = write_triton_model(artifact, repo, TritonOptions(name="vit", max_batch=4))
    cfg = parse_config(model.directory)
    assert cfg.max_batch_size == 4 and list(cfg.dynamic_batching.preferred_batch_size) == [4]


def test_unknown_profile_refused(artifact, tmp_path):
    art = tmp_path / "noprofile"
    shutil.copytree(artifact, art)
    manifest = read_manifest(art)
    del manifest["batch_profile"]
    write_manifest(art, manifest)
    with pytest.raises(ArtifactError, match="batch_profile: expected MIN:OPT:MAX"):
        write_triton_model(art, tmp_path / "repo")
    assert not (tmp_path / "repo" / "noprofile").exists()


def test_plan_config(artifact, tmp_path):
    art = fake_trt(artifact, tmp_path, {"min": 1, "opt": 4, "max": 16})
    model = write_triton_model(art, tmp_path / "repo", TritonOptions(name="plan"))
    cfg = parse_config(model.directory)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    files = sorted(p.name for p in (model.directory / "1").iterdir())
    assert files == ["manifest.json", "model.plan"]  # the ONNX source is not copied
    written = read_manifest(model.directory / "1")
    assert written["artifact"]["file"] == "model.plan" and "extra_files" not in written["artifact"]
    with pytest.raises(ConfigError, match="kind: expected one of \\['gpu'\\]"):
        write_triton_model(art, tmp_path / "repo", TritonOptions(name="p2", kind="cpu"))


def test_plan_profiles_triton_cannot_use(artifact, tmp_path):
    art = fake_trt(artifact, tmp_path, {"min": 2, "opt": 4, "max": 16})
    with pytest.raises(ArtifactError, match="expected MIN 1"):
        write_triton_model(art, tmp_path / "repo")
    shutil.rmtree(art)
    art = fake_trt(
        artifact, tmp_path, {"min": 1, "opt": 4, "max": 16}, {"min": 1, "opt": 4, "max": 64}
    )
    with pytest.raises(ArtifactError, match="batch_profile: expected the engine's 1:4:16"):
        write_triton_model(art, tmp_path / "repo")


def test_replace_and_refuse_foreign_dir(artifact, tmp_path):
    repo = tmp_path / "repo"
    write_triton_model(artifact, repo, TritonOptions(name="vit", max_batch=8))
    write_triton_model(artifact, repo, TritonOptions(name="vit", max_batch=16))  # replaces
    assert parse_config(repo / "vit").max_batch_size == 16
    (repo / "other").mkdir()
    (repo / "other" / "notes.txt").write_text("someone else's model")
    with pytest.raises(ConfigError, match="name: expected a new model name"):
        write_triton_model(artifact, repo, TritonOptions(name="other"))
    assert (repo / "other" / "notes.txt").is_file() and leftovers(repo) == []


def test_failed_write_leaves_nothing(artifact, tmp_path, monkeypatch):
    import vit_deploy.export.triton.repository as repository

    def broken_copy(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(repository.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError):
        write_triton_model(artifact, tmp_path / "repo", TritonOptions(name="vit"))
    assert list((tmp_path / "repo").iterdir()) == []


def test_cli(artifact, tmp_path, capsys):
    repo = tmp_path / "repo"
    argv = ["--fmt", "triton", "--from", str(artifact), "--out", str(repo), "--name", "vit"]
    assert export_main([*argv, "--instances", "3", "--queue-delay-us", "500"]) == 0
    out = capsys.readouterr().out
    assert "max_batch_size 32" in out and "tritonserver --model-repository" in out
    cfg = parse_config(repo / "vit")
    assert cfg.instance_group[0].count == 3
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert export_main([*argv, "--max-batch", "33"]) == 2
    assert "--max-batch: expected 1..32" in capsys.readouterr().err
    assert export_main([*argv, "--model", "vit_small_patch16_224"]) == 2
    assert export_main(["--fmt", "triton", "--out", str(repo)]) == 2
    assert "--from: expected" in capsys.readouterr().err
