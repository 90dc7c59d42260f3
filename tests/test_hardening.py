"""Issue 17: concurrent writers, leftovers of killed runs, artifacts that lie, EXIF, the
pixel limit, misleading messages, and one exit-code convention across the CLIs.

Races and kills use real processes (a lock held by a thread of this process would prove
nothing about a second process); the rest runs the CLIs in this process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from embed_helpers import FAST_EXPORT, tiny_artifact
from PIL import Image

import vit_deploy
from vit_deploy.config import Preprocess, ViTConfig
from vit_deploy.embed.embedder import Embedder, cached_export
from vit_deploy.embed.pipeline import read_embeddings
from vit_deploy.errors import ManifestError
from vit_deploy.manifest import read_manifest, sha256_file, verify_checksum

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 120  # a subprocess reaching a point (imports torch first): generous on 2 busy cores
COS_TWIN = 0.999  # the same picture through two JPEG encodings (rotated and upright)
COS_SAME = 1 - 1e-6  # the same decoded pixels through the same backend


def env() -> dict:
    return {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}


def cli(module: str, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"vit_deploy.cli.{module}", *map(str, args)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=WAIT_S * 2,
        **kw,
    )


def wait_for(predicate, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"{what}: the process ended first (rc {proc.returncode}): {out}{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what}: not reached in {WAIT_S} s")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_S)


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("images")
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


# ---------------------------------------------------------------------- one writer


# A real second process that embeds with the library (the same WorkDir and lock as
# vit-embed) and stops after its first chunk until told to go on (or is killed there).
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from vit_deploy.embed.embedder import Embedder
    from vit_deploy.embed.pipeline import embed_files

    artifact, images, out, ready, go = sys.argv[1:]
    def on_chunk(n):
        if n == 1:
            Path(ready).write_text("chunk 1 on disk")
            while not Path(go).exists():
                time.sleep(0.02)
    embed_files(Embedder.from_artifact(artifact), images, out, chunk_rows=4, batch_size=2,
                workers=0, progress=False, on_chunk=on_chunk)
    """
)


def start_holder(artifact, images, out, tmp_path) -> tuple[subprocess.Popen, Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, artifact, images, out, ready, go],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(ready.exists, proc, "first writer's first chunk")
    return proc, go


def test_second_vit_embed_on_one_out_exits_2_naming_the_first(artifact, images, tmp_path):
    out = tmp_path / "emb.npy"
    first, go = start_holder(artifact, images, out, tmp_path)
    work = tmp_path / "emb.npy.partial"
    before = snapshot(work)
    second = cli("embed", "--artifact", artifact, "--images", images, "--out", out, "--quiet")
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0], second.stderr
    assert "Traceback" not in second.stderr
    assert snapshot(work) == before  # the live run's chunks were not touched
    assert not out.exists()
    go.write_text("go")
    assert first.wait(timeout=WAIT_S) == 0, first.communicate()
    paths, rows = read_embeddings(out)
    assert len(rows) == len(list(images.glob("*.png"))) and not work.exists()


def test_work_dir_of_a_killed_vit_embed_is_resumed_with_a_line(artifact, images, tmp_path):
    out = tmp_path / "emb.npy"
    first, _ = start_holder(artifact, images, out, tmp_path)
    kill(first)  # its lock dies with it; its finished chunk stays
    rerun = cli("embed", "--artifact", artifact, "--images", images, "--out", out, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert "vit-embed: warning: resuming an interrupted run: 1 finished chunk(s)" in rerun.stderr
    assert "4 reused from an interrupted run" in rerun.stdout
    clean = cli(
        "embed", "--artifact", artifact, "--images", images, "--out", tmp_path / "c.npy", "--quiet"
    )
    assert clean.returncode == 0, clean.stderr
    np.testing.assert_allclose(
        read_embeddings(out)[1], read_embeddings(tmp_path / "c.npy")[1], atol=1e-6
    )


def test_sigkilled_export_is_cleaned_by_the_rerun_and_the_old_artifact_survives(artifact, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(artifact, out)  # an earlier export to be replaced
    old_manifest = (out / "manifest.json").read_bytes()
    first = subprocess.Popen(
        [sys.executable, "-m", "vit_deploy.cli.export", "--out", out, "--quiet"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    staging = lambda: list(tmp_path.glob(".art.partial-*"))  # noqa: E731
    wait_for(lambda: bool(staging()), first, "the export's staging dir")
    first.send_signal(signal.SIGSTOP)  # frozen mid-export: its lock is held
    try:
        second = cli("export", "--out", out, "--quiet")
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        kill(first)
    assert staging(), "the killed export left no staging dir: the test proves nothing"
    assert (out / "manifest.json").read_bytes() == old_manifest
    verify_checksum(out)  # the old artifact is intact and valid
    rerun = cli("export", "--out", out, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert "removed 1 staging dir(s) left by a killed run" in rerun.stderr
    assert staging() == [] and not list(tmp_path.glob(".art.old-*"))
    assert (out / "manifest.json").read_bytes() != old_manifest
    verify_checksum(out)
    # the fused-ops line reports the chosen graph; a candidate that was not chosen adds no
    # warning that contradicts it (it said "attention fused in 0 of 4 blocks" after 4/4)
    assert "fused ops: artifact: attention " in rerun.stdout
    assert "fused in 0 of" not in rerun.stdout + rerun.stderr
    assert "WARNING" not in rerun.stdout


# ---------------------------------------------------------------------- artifacts that lie


def other_model(change: str):
    """The tiny model with one thing changed: what a lying manifest hides."""
    size = 48 if change == "img_size" else 32
    cfg = ViTConfig(
        img_size=size,
        patch_size=8,
        embed_dim=48 if change == "embed_dim" else 32,
        depth=2,
        num_heads=2,
        num_classes=5 if change == "classes" else 3,
        preprocess=Preprocess(img_size=size, crop_pct=0.875, interpolation="bilinear"),
    )
    return vit_deploy.create_model(cfg, seed=0)


def swap_graph(artifact: Path, graph: Path, dest: Path) -> Path:
    """``artifact`` with another model's graph, its manifest re-hashed to match."""
    shutil.copytree(artifact, dest)
    shutil.copyfile(graph, dest / "model.onnx")
    manifest = json.loads((dest / "manifest.json").read_text())
    entry = manifest["artifact"]
    entry["sha256"] = sha256_file(dest / "model.onnx")
    for key in ("size", "size_bytes"):
        if key in entry:
            entry[key] = (dest / "model.onnx").stat().st_size
    (dest / "manifest.json").write_text(json.dumps(manifest))
    verify_checksum(dest)  # the checksum alone would accept it
    return dest


LIES = {
    "classes": "output logits dim 1: manifest 3, graph 5",
    "embed_dim": "output embedding dim 1: manifest 32, graph 48",
    "img_size": "input pixels dim 2: manifest 32, graph 48",
}


@pytest.mark.parametrize("change", sorted(LIES))
def test_manifest_that_lies_about_the_graph_is_refused(
    change, artifact, images, tmp_path, tmp_path_factory, capsys
):
    cache = tmp_path_factory.getbasetemp() / "hardening-other-models"
    graph = cached_export(other_model(change), cache, FAST_EXPORT) / "model.onnx"
    lie = swap_graph(artifact, graph, tmp_path / "lie")
    with pytest.raises(ManifestError, match="does not describe this graph") as err:
        Embedder.from_artifact(lie).classify([np.zeros((40, 40, 3), np.uint8)])
    assert LIES[change] in str(err.value)
    from vit_deploy.cli.embed import main

    code = main(["--artifact", str(lie), "--images", str(images), "--out", str(tmp_path / "o.npy")])
    err = capsys.readouterr().err
    assert code == 2 and LIES[change] in err and "Traceback" not in err
    assert not (tmp_path / "o.npy").exists()


def test_manifest_file_path_outside_the_artifact_is_refused(artifact, images, tmp_path, capsys):
    lie = tmp_path / "art"
    shutil.copytree(artifact, lie)
    (lie / "model.onnx").rename(tmp_path / "x.onnx")
    manifest = json.loads((lie / "manifest.json").read_text())
    manifest["artifact"]["file"] = "../x.onnx"
    (lie / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"inside the artifact folder, got '\.\./x\.onnx'"):
        Embedder.from_artifact(lie)
    from vit_deploy.cli.embed import main

    code = main(["--artifact", str(lie), "--images", str(images), "--out", str(tmp_path / "o.npy")])
    assert code == 2 and "'../x.onnx'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def default_export(tmp_path_factory) -> Path:
    """The bundled default model, exported without the graph search and parity gate."""
    from vit_deploy.cli.export import main

    out = tmp_path_factory.mktemp("default") / "art"
    assert main(["--out", str(out), "--optimize", "plain", "--no-verify", "--quiet"]) == 0
    return out


def test_vit_bench_refuses_a_lying_artifact_before_timing(
    default_export, artifact, tmp_path, capsys
):
    from vit_deploy.cli.bench import main

    lie = swap_graph(default_export, artifact / "model.onnx", tmp_path / "lie")
    model = read_manifest(lie)["model"]
    argv = ["--artifacts", str(lie), "--backends", "ort", "--batch-sizes", "1"]
    code = main([*argv, "--out", str(tmp_path / "bench"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "does not describe this graph" in err, err
    assert f"output logits dim 1: manifest {model['num_classes']}, graph 3" in err
    assert not (tmp_path / "bench").exists()  # refused before anything ran


# ---------------------------------------------------------------------- EXIF


def upright_picture() -> Image.Image:
    """Smooth (JPEG keeps it), not symmetric under a quarter turn, not square."""
    y, x = np.mgrid[0:64, 0:48].astype(np.float32)
    rgb = np.stack([x / 47 * 255, y / 63 * 255, 255 * (x < 16) * (y < 24)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


# EXIF orientation -> the turn that stores the upright picture so a viewer shows it upright
# (PIL's exif_transpose undoes it: 6 -> ROTATE_270, 8 -> ROTATE_90)
STORED = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def save_jpeg(img: Image.Image, path: Path, orientation: int | None = None) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(path, quality=100, subsampling=0, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_rotated_jpeg_embeds_like_its_upright_twin(orientation, artifact, tmp_path, capsys):
    from vit_deploy.cli.embed import main

    folder = tmp_path / "photos"
    folder.mkdir()
    upright = upright_picture()
    save_jpeg(upright, folder / "a-upright.jpg")
    rotated = save_jpeg(upright.transpose(STORED[orientation]), folder / "b-phone.jpg", orientation)
    rows = {}
    for flag in ("--exif-transpose", "--no-exif-transpose"):
        out = tmp_path / f"{flag}.npy"
        argv = ["--artifact", str(artifact), "--images", str(folder), "--out", str(out), "--quiet"]
        assert main([*argv, flag]) == 0, capsys.readouterr().err
        paths, emb = read_embeddings(out)
        assert [Path(p).name for p in paths] == ["a-upright.jpg", "b-phone.jpg"]
        rows[flag] = emb
    on, off = rows["--exif-transpose"], rows["--no-exif-transpose"]
    assert float(on[0] @ on[1]) > COS_TWIN  # turned as a viewer shows it
    assert float(off[0] @ off[1]) < COS_TWIN  # the test can tell a turned image apart
    # flag off: the stored pixels, exactly as Pillow decodes them without the tag
    stored = np.asarray(Image.open(rotated).convert("RGB"))
    raw = Embedder.from_artifact(artifact).embed([stored])
    assert float(off[1] @ raw[0]) > COS_SAME


# ---------------------------------------------------------------------- pixel limit


def test_image_over_the_pixel_limit_is_a_recorded_failure_without_a_raw_warning(artifact, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    limit = 1000
    Image.new("RGB", (30, 30), (9, 9, 9)).save(folder / "ok.png")  # 900 pixels
    Image.new("RGB", (40, 40), (9, 9, 9)).save(folder / "big.png")  # over ours, Pillow warns
    Image.new("RGB", (50, 50), (9, 9, 9)).save(folder / "bomb.png")  # over twice Pillow's
    # Pillow's own guard lowered to the same limit, so its warning would fire on big.png
    # and its error on bomb.png, as they do on a real 90-180 MP image
    code = textwrap.dedent(
        f"""
        import sys, PIL.Image
        PIL.Image.MAX_IMAGE_PIXELS = {limit}
        from vit_deploy.cli.embed import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    out = tmp_path / "o.npy"
    argv = [
        "--artifact",
        artifact,
        "--images",
        folder,
        "--out",
        out,
        "--max-pixels",
        limit,
        "--quiet",
    ]
    run = subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=WAIT_S * 2,
    )
    assert run.returncode == 1, run.stderr  # partial: some inputs failed
    assert "DecompressionBombWarning" not in run.stderr and "Traceback" not in run.stderr
    errors = [json.loads(line) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()]
    reasons = {Path(e["path"]).name: e["reason"] for e in errors}
    assert sorted(reasons) == ["big.png", "bomb.png"]
    assert f"40 x 40 = 1,600 pixels, expected at most {limit:,}" in reasons["big.png"]
    assert "MAX_IMAGE_PIXELS" in reasons["bomb.png"]
    paths, emb = read_embeddings(out)
    assert [Path(p).name for p in paths] == ["ok.png"]


# ---------------------------------------------------------------------- messages


def test_hub_name_says_nothing_is_downloaded_and_how_to_get_weights(tmp_path, capsys):
    from vit_deploy.cli.export import main

    code = main(["--model", "google/vit-base-patch16-224", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing is downloaded" in err
    assert "huggingface-cli download google/vit-base-patch16-224 --local-dir" in err
    assert "did you mean" not in err  # no random-weights preset offered for it
    assert not (tmp_path / "a").exists()


def _tensorrt_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_tensorrt_gpu(), reason="tests the refusal where TensorRT cannot run")
def test_trt_export_without_gpu_or_tensorrt_exits_2(tmp_path, capsys):
    from vit_deploy.cli.export import main

    code = main(["--fmt", "trt", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "needs TensorRT" in err and "vit-export --fmt onnx" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "e").exists()


# ---------------------------------------------------------------------- exit codes


def bad_input(tool: str, tmp_path: Path) -> list[str]:
    """One bad-input command line per CLI (each must exit 2)."""
    missing = str(tmp_path / "missing")
    return {
        "vit-export": ["--model", f"{missing}.pth", "--out", str(tmp_path / "out")],
        "vit-bench": ["--backends", "no-such-backend", "--out", str(tmp_path / "out")],
        "vit-embed": ["--artifact", missing, "--images", str(tmp_path), "--out", "o.npy"],
        "vit-inspect": ["--image", f"{missing}.png", "--out", str(tmp_path / "out")],
        "vit-deploy": ["no-such-command"],
        "vit-serve": ["--artifact", missing, "--port", "0"],
    }[tool]


SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("tool", sorted(SCRIPTS))
def test_every_cli_exits_2_on_bad_input(tool, tmp_path, capsys):
    module, func = SCRIPTS[tool].split(":")
    main = getattr(__import__(module, fromlist=[func]), func)
    try:
        code = main(bad_input(tool, tmp_path))
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and f"{tool}: error:" in err
    assert not (tmp_path / "out").exists()
