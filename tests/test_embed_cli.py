"""vit-embed and the streaming pipeline: outputs read back, broken files accounted for,
bad arguments, and resume after a simulated interruption."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from embed_helpers import make_image_folder, png_bytes, random_image, tiny_artifact

from vit_deploy.cli.embed import main
from vit_deploy.embed.embedder import Embedder
from vit_deploy.embed.pipeline import discover, embed_files, read_embeddings
from vit_deploy.errors import ResumeError

ATOL = 1e-6  # the same backend on the same pixels; only the batch composition differs


class Interrupted(Exception):
    pass


class CountingBackend:
    """Wraps a backend and counts the images it was given."""

    def __init__(self, inner):
        self.inner, self.images = inner, 0
        self.name, self.config = inner.name, inner.config
        self.manifest, self.output_names = inner.manifest, inner.output_names

    def __call__(self, pixels):
        self.images += len(pixels)
        return self.inner(pixels)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def embedder(artifact):
    return Embedder.from_artifact(artifact)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "images"
    return root, make_image_folder(root)


def run(argv, capsys):
    code = main([str(a) for a in argv] + ["--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def read_errors(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_rows_match(embedder, paths, emb):
    np.testing.assert_allclose(emb, embedder.embed(paths), atol=ATOL)


def test_parquet_output_maps_paths_and_records_failures(
    artifact, embedder, folder, tmp_path, capsys
):
    root, files = folder
    out = tmp_path / "emb.parquet"
    code, stdout, err = run(["--artifact", artifact, "--images", root, "--out", out], capsys)
    assert code == 1, err  # some files failed
    table = pq.read_table(out)
    assert table.schema.field("embedding").type.list_size == 32
    paths = table.column("path").to_pylist()
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    assert paths == files["good"]
    assert_rows_match(embedder, paths, emb)
    errors = read_errors(tmp_path / "emb.parquet.errors.jsonl")
    assert sorted(e["path"] for e in errors) == files["broken"]
    reasons = {e["path"].rsplit("/", 1)[1]: e["reason"] for e in errors}
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert "truncated" in reasons["truncated.png"] and "cannot identify" in reasons["notes.jpg"]
    assert table.num_rows + len(errors) == len(discover(root)) == 20
    assert "20 inputs: 16 rows, 4 failed" in stdout and "ignored 1 files" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet", "emb.parquet.errors.jsonl"]
    back_paths, back = read_embeddings(out)
    assert back_paths == paths
    np.testing.assert_array_equal(back, emb)


def test_npy_output_with_paths_sidecar(artifact, embedder, folder, tmp_path, capsys):
    root, files = folder
    out = tmp_path / "emb.npy"
    errors = tmp_path / "failed.jsonl"
    argv = ["--artifact", artifact, "--images", root, "--out", out, "--errors", errors]
    code, _, _ = run([*argv, "--batch-size", "3", "--workers", "0", "--no-normalize"], capsys)
    assert code == 1
    emb = np.load(out)
    paths = (tmp_path / "emb.npy.paths.txt").read_text().splitlines()
    assert emb.shape == (16, 32) and emb.dtype == np.float32 and paths == files["good"]
    np.testing.assert_allclose(emb, embedder.embed(paths, normalize=False), atol=ATOL)
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    assert len(emb) + len(read_errors(errors)) == 20


def test_clean_run_exits_zero_with_an_empty_errors_file(artifact, folder, tmp_path, capsys):
    root, files = folder
    images = tmp_path / "ok"
    images.mkdir()
    for i in range(3):
        random_image(np.random.default_rng(i), 30, 40).save(images / f"{i}.png")
    report = tmp_path / "report.json"
    argv = ["--artifact", artifact, "--images", images, "--out", tmp_path / "e.npy"]
    code, stdout, _ = run([*argv, "--report", report], capsys)
    assert code == 0 and "3 rows, 0 failed" in stdout
    assert (tmp_path / "e.npy.errors.jsonl").read_text() == ""
    assert json.loads(report.read_text())["rows"] == 3


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_outputs_when_some_or_all_fail(fmt, artifact, folder, tmp_path, capsys):
    root, files = folder
    out = tmp_path / f"none.{fmt}"
    code, stdout, _ = run(
        ["--artifact", artifact, "--images", root / "*.jpg", "--out", out], capsys
    )
    jpgs = sorted(str(p) for p in root.glob("*.jpg"))
    broken = [p for p in jpgs if p in files["broken"]]
    paths, emb = read_embeddings(out)
    assert code == 1 and emb.shape == (len(jpgs) - len(broken), 32)
    assert len(read_errors(tmp_path / f"none.{fmt}.errors.jsonl")) == len(broken) == 2

    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    for name in ("a.png", "b.png"):
        (only_broken / name).write_bytes(b"")
    out = tmp_path / f"zero.{fmt}"
    code, stdout, _ = run(["--artifact", artifact, "--images", only_broken, "--out", out], capsys)
    paths, emb = read_embeddings(out)
    assert code == 1 and paths == [] and emb.shape == (0, 32) and "0 rows, 2 failed" in stdout


def test_glob_matches_a_folder_named_like_an_image(artifact, folder, tmp_path, capsys):
    root, files = folder
    out = tmp_path / "g.parquet"
    code, _, _ = run(["--artifact", artifact, "--images", root / "*.png", "--out", out], capsys)
    assert code == 1
    errors = {e["path"]: e["reason"] for e in read_errors(tmp_path / "g.parquet.errors.jsonl")}
    assert "IsADirectoryError" in errors[str(root / "x.png")]
    paths = pq.read_table(out).column("path").to_pylist()
    assert str(root / "x.png" / "inner.png") not in paths
    assert len(paths) + len(errors) == len(list(root.glob("*.png")))


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty folder", "no images found"),
        ("no such images", "no such path"),
        ("out under a file", "expected an existing directory"),
        ("out in a missing folder", "no such directory"),
        ("out is a folder", "got a directory"),
        ("unknown extension", "expected a file ending in .npy or .parquet"),
        ("missing artifact", "expected an artifact directory"),
    ],
)
def test_bad_arguments_exit_2_before_any_work(case, message, artifact, folder, tmp_path, capsys):
    root, _ = folder
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.npy").mkdir()
    images, out, art = root, tmp_path / "o.npy", artifact
    if case == "empty folder":
        images = tmp_path / "empty"
    elif case == "no such images":
        images = tmp_path / "nothing-here"
    elif case == "out under a file":
        out = tmp_path / "file" / "o.npy"
    elif case == "out in a missing folder":
        out = tmp_path / "missing" / "o.npy"
    elif case == "out is a folder":
        out = tmp_path / "dir.npy"
    elif case == "unknown extension":
        out = tmp_path / "o.csv"
    else:
        art = tmp_path / "no-artifact"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["--artifact", art, "--images", images, "--out", out], capsys)
    assert code == 2 and message in err and err.startswith("vit-embed: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_bad_numbers_are_usage_errors(artifact, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--artifact", str(artifact), "--images", ".", "--out", "o.npy", "--batch-size", "0"])
    assert exc.value.code == 2 and "positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------------- resume


def interrupt_after(n_chunks):
    def on_chunk(n):
        if n == n_chunks:
            raise Interrupted(f"simulated crash after chunk {n}")

    return on_chunk


def test_resume_embeds_only_what_is_left(embedder, folder, tmp_path):
    root, files = folder
    out = tmp_path / "r.parquet"
    kw = dict(chunk_rows=4, batch_size=2, progress=False)
    first = Embedder(CountingBackend(embedder.backend))
    with pytest.raises(Interrupted):
        embed_files(first, root, out, on_chunk=interrupt_after(2), **kw)
    assert not out.exists() and len(list((tmp_path / "r.parquet.partial").glob("chunk-*"))) == 2
    done_first = first.backend.images

    second = Embedder(CountingBackend(embedder.backend))
    result = embed_files(second, root, out, **kw)
    assert result.inputs == 20 and result.rows == 16 and result.failed == 4
    assert result.reused == done_first > 0  # the rows of the two finished chunks
    assert result.processed == 20 - done_first  # the rest, broken files included
    assert second.backend.images == 16 - done_first  # the model saw only the remaining images
    table = pq.read_table(out)
    assert table.column("path").to_pylist() == files["good"]
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert_rows_match(embedder, files["good"], emb)
    assert not (tmp_path / "r.parquet.partial").exists()


def test_resume_redoes_changed_files_and_refuses_other_settings(
    artifact, embedder, folder, tmp_path, capsys
):
    root, files = folder
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(10):
        random_image(rng, 40, 40).save(images / f"{i}.png")
    out = tmp_path / "r.npy"
    with pytest.raises(Interrupted):
        embed_files(embedder, images, out, chunk_rows=3, batch_size=3, progress=False,
                    on_chunk=interrupt_after(2))  # fmt: skip
    changed = images / "0.png"  # in a finished chunk; rewritten before the resume
    random_image(rng, 70, 50).save(changed)

    argv = ["--artifact", artifact, "--images", images, "--out", out]
    code, _, err = run([*argv, "--no-normalize"], capsys)
    assert code == 2 and "unfinished run with other settings" in err and "normalize" in err
    with pytest.raises(ResumeError):
        embed_files(embedder, images, out, normalize=False, progress=False)

    code, stdout, _ = run(argv, capsys)
    assert code == 0 and "5 reused from an interrupted run" in stdout  # 6 done, 1 changed
    paths = (tmp_path / "r.npy.paths.txt").read_text().splitlines()
    # reused rows first, then this run's in input order; the sidecar says which row is which
    assert paths == [str(images / f"{i}.png") for i in (1, 2, 3, 4, 5, 0, 6, 7, 8, 9)]
    assert_rows_match(embedder, paths, np.load(out))

    with pytest.raises(Interrupted):
        embed_files(
            embedder, images, out, chunk_rows=3, progress=False, on_chunk=interrupt_after(1)
        )
    code, stdout, _ = run([*argv, "--no-normalize", "--no-resume"], capsys)
    assert code == 0 and "reused" not in stdout
    paths = (tmp_path / "r.npy.paths.txt").read_text().splitlines()
    assert paths == sorted(paths)  # one uninterrupted run: input (sorted) order
    np.testing.assert_allclose(np.load(out), embedder.embed(paths, normalize=False), atol=ATOL)


def test_resume_retries_failed_files(embedder, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(6)
    for i in range(4):
        random_image(rng, 40, 40).save(images / f"{i}.png")
    (images / "late.png").write_bytes(b"")  # fails in the first run
    out = tmp_path / "r.npy"
    with pytest.raises(Interrupted):
        embed_files(
            embedder, images, out, chunk_rows=10, progress=False, on_chunk=interrupt_after(1)
        )
    random_image(rng, 40, 40).save(images / "late.png")  # fixed before the resume
    result = embed_files(embedder, images, out, progress=False)
    assert (result.rows, result.failed, result.reused, result.processed) == (5, 0, 4, 1)


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_awkward_file_names(fmt, embedder, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(7)
    for name in ("ok.png", "é ü.png", "line\nbreak.png"):
        random_image(rng, 30, 30).save(images / name)
    with open(os.fsencode(images) + b"/\xff.png", "wb") as f:  # not UTF-8
        f.write(png_bytes(random_image(rng, 30, 30)))
    out = tmp_path / f"o.{fmt}"
    result = embed_files(embedder, images, out, progress=False)
    errors = read_errors(tmp_path / f"o.{fmt}.errors.jsonl")
    reasons = {e["path"].rsplit("/", 1)[1]: e["reason"] for e in errors}
    assert "not valid UTF-8" in reasons[os.fsdecode(b"\xff.png")]
    if fmt == "npy":  # .paths.txt cannot list a name with a line break
        assert "line break" in reasons["line\nbreak.png"]
    paths, emb = read_embeddings(out)
    assert result.rows + result.failed == 4 == len(paths) + len(errors)
    assert str(images / "é ü.png") in paths and emb.shape == (len(paths), 32)
