"""Ray Data embedding (vit_deploy.embed.ray_data, vit-embed --ray) on a local two-CPU Ray
started and stopped by this module: outputs equal to the local vit-embed, broken files
recorded, a killed actor retried without duplicate rows, resume after an interruption."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
from embed_helpers import make_image_folder, tiny_artifact

from vit_deploy.cli.embed import main
from vit_deploy.embed.embedder import Embedder
from vit_deploy.embed.pipeline import read_embeddings
from vit_deploy.embed.ray_data import EmbedBatch
from vit_deploy.preprocess import DecodeOptions

ray = pytest.importorskip("ray")

ATOL = 1e-6  # the same backend on the same pixels; only the batch composition differs
KILL_MARKER_ENV = "VIT_DEPLOY_TEST_KILL_MARKER"


class KillOnce(EmbedBatch):
    """Ends its own process on its first batch, as an OOM kill or a lost node would, once:
    the marker file (created first) tells the restarted actor it already happened."""

    def __call__(self, batch):
        marker = os.environ[KILL_MARKER_ENV]
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return super().__call__(batch)


# the workers cannot import this test module: ship KillOnce by value (Ray's own cloudpickle)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    marker = tmp_path_factory.mktemp("ray-kill") / "killed"
    assert not ray.is_initialized()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        runtime_env={"env_vars": {KILL_MARKER_ENV: str(marker)}},
    )
    yield marker
    ray.shutdown()
    assert not ray.is_initialized()
    assert _ray_processes() == [], "ray.shutdown() left processes running"


def _ray_processes(wait_s: float = 10.0) -> list[str]:
    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for child in psutil.Process().children(recursive=True):
            try:
                if "ray" in " ".join(child.cmdline()):
                    left.append(child.name())
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def embedder(artifact):
    return Embedder.from_artifact(artifact)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray") / "images"
    return root, make_image_folder(root)


@pytest.fixture(scope="module")
def local_parquet(artifact, folder, tmp_path_factory):
    """The local vit-embed's output for the folder: what every Ray run must equal."""
    out = tmp_path_factory.mktemp("local") / "emb.parquet"
    assert main(["--artifact", str(artifact), "--images", str(folder[0]), "--out", str(out),
                 "--quiet"]) == 1  # fmt: skip
    return out


def read_errors(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_output(out, reference):
    paths, emb = read_embeddings(out)
    ref_paths, ref = read_embeddings(reference)
    assert paths == ref_paths  # the same rows in the same (sorted) order
    assert not np.isnan(emb).any()
    assert float(np.abs(np.asarray(emb) - np.asarray(ref)).max()) <= ATOL
    errors = out.with_name(out.name + ".errors.jsonl")
    assert read_errors(errors) == read_errors(reference.with_name(reference.name + ".errors.jsonl"))
    return paths


def test_embed_batch_without_ray(artifact, embedder, folder):
    root, files = folder
    good, missing = files["good"][0], str(root / "missing.png")
    batch = pa.table({"path": [good, None, missing, str(root / "empty.png")], "id": [1, 2, 3, 4]})
    out = EmbedBatch(artifact)(batch)
    assert out.column_names == ["path", "id", "embedding", "error"]
    assert out.column("id").to_pylist() == [1, 2, 3, 4]
    errors = out.column("error").to_pylist()
    assert errors[0] is None and "null" in errors[1] and "FileNotFoundError" in errors[2]
    assert errors[3] == "empty file (0 bytes)"
    emb = out.column("embedding")
    assert emb.null_count == 3 and emb.type.list_size == embedder.dim
    row = np.asarray(emb[0].as_py(), np.float32)
    assert not np.isnan(row).any()
    np.testing.assert_allclose(row, embedder.embed(good)[0], atol=ATOL)


def test_embed_batch_on_bytes_uses_the_decode_options(artifact, embedder, folder):
    root, files = folder
    good = files["good"][0]
    data = [open(good, "rb").read(), (root / "truncated.png").read_bytes(), b""]
    out = EmbedBatch(artifact)(pa.table({"bytes": data}))
    errors = out.column("error").to_pylist()
    assert errors[0] is None and "truncated" in errors[1] and errors[2] == "empty file (0 bytes)"
    row = np.asarray(out.column("embedding")[0].as_py(), np.float32)
    np.testing.assert_allclose(row, embedder.embed(good)[0], atol=ATOL)
    small = EmbedBatch(artifact, decode=DecodeOptions(max_pixels=100))(pa.table({"bytes": data}))
    assert small.column("error")[0].as_py().startswith("ImageTooLargeError")


def test_cli_ray_equals_local_vit_embed(ray_local, artifact, folder, local_parquet, tmp_path):
    root, files = folder
    out, report = tmp_path / "emb.parquet", tmp_path / "report.json"
    argv = ["--artifact", artifact, "--images", root, "--out", out, "--report", report]
    code = main([str(a) for a in argv] + ["--ray", "--actors", "2", "--batch-size", "3",
                                          "--chunk-rows", "7", "--quiet"])  # fmt: skip
    assert code == 1  # some files failed, as without --ray
    paths = assert_same_output(out, local_parquet)
    assert paths == files["good"]
    assert (
        sorted(e["path"] for e in read_errors(tmp_path / "emb.parquet.errors.jsonl"))
        == (files["broken"])
    )
    summary = json.loads(report.read_text())
    assert (summary["rows"], summary["failed"], summary["actors"]) == (16, 4, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "emb.parquet", "emb.parquet.errors.jsonl", "report.json"]  # fmt: skip


def test_embed_dataset_on_bytes_keeps_broken_files_as_rows(ray_local, artifact, embedder, folder):
    from vit_deploy.embed.ray_data import embed_dataset

    root, files = folder
    wanted = files["good"][:6] + files["broken"]
    ds = ray.data.read_binary_files(wanted, include_paths=True)
    # one actor: with two, both CPUs go to actors and the read tasks never get one
    rows = embed_dataset(ds, artifact, actors=1, batch_size=4).take_all()
    assert len(rows) == len(wanted)  # nothing dropped
    by_name = {os.path.basename(r["path"]): r for r in rows}
    assert sorted(by_name) == sorted(os.path.basename(p) for p in wanted)
    for path in files["good"][:6]:
        row = by_name[os.path.basename(path)]
        assert row["error"] is None and set(row) == {"bytes", "path", "embedding", "error"}
        emb = np.asarray(row["embedding"], np.float32)
        assert not np.isnan(emb).any()
        np.testing.assert_allclose(emb, embedder.embed(path)[0], atol=ATOL)
    reasons = {os.path.basename(p): by_name[os.path.basename(p)]["error"] for p in files["broken"]}
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert "truncated" in reasons["truncated.png"] and "cannot identify" in reasons["notes.jpg"]
    assert all(by_name[name]["embedding"] is None for name in reasons)


def test_killed_actor_is_retried_without_duplicate_rows(
    ray_local, artifact, folder, local_parquet, tmp_path
):
    from vit_deploy.embed.ray_files import embed_files_ray

    root, files = folder
    assert not ray_local.exists()
    out = tmp_path / "emb.npy"
    result, _ = embed_files_ray(artifact, root, out, actors=2, batch_size=4, chunk_rows=6,
                                progress=False, batch_fn=KillOnce)  # fmt: skip
    assert ray_local.exists()  # an actor did die mid-run
    paths, emb = read_embeddings(out)
    assert len(paths) == len(set(paths)) == result.rows == 16 and result.failed == 4
    ref_paths, ref = read_embeddings(local_parquet)
    assert paths == ref_paths and not np.isnan(emb).any()
    assert float(np.abs(emb - ref).max()) <= ATOL
    assert len(read_errors(tmp_path / "emb.npy.errors.jsonl")) == 4


def test_resume_after_an_interrupted_ray_run(ray_local, artifact, folder, local_parquet, tmp_path):
    from vit_deploy.embed.ray_files import embed_files_ray

    root, _ = folder
    out = tmp_path / "emb.parquet"
    kw = dict(actors=2, batch_size=3, chunk_rows=5, progress=False)

    def crash_after_two(n):
        if n == 2:
            raise Interrupted("simulated crash of the driver after its second chunk")

    with pytest.raises(Interrupted):
        embed_files_ray(artifact, root, out, on_chunk=crash_after_two, **kw)
    assert not out.exists() and len(list((tmp_path / "emb.parquet.partial").glob("chunk-*"))) == 2
    result, _ = embed_files_ray(artifact, root, out, **kw)
    assert result.reused > 0 and result.processed == 20 - result.reused  # nothing redone
    assert (result.rows, result.failed) == (16, 4)
    assert_same_output(out, local_parquet)
    assert not (tmp_path / "emb.parquet.partial").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--actors", "2"], "need --ray"),
        (["--ray", "--workers", "2"], "--workers and --threads are for the local run"),
    ],
)
def test_ray_flags_misused_exit_2(extra, message, artifact, folder, tmp_path, capsys):
    argv = [
        "--artifact",
        str(artifact),
        "--images",
        str(folder[0]),
        "--out",
        str(tmp_path / "o.npy"),
    ]
    assert main(argv + extra) == 2
    assert message in capsys.readouterr().err and list(tmp_path.iterdir()) == []
