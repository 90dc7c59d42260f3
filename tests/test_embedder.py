"""The Embedder: input kinds, batching, normalisation, classify, threads, export cache, errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from embed_helpers import FAST_EXPORT, LABELS, random_image, tiny_artifact, tiny_model
from PIL import Image

from vit_deploy.checkpoints.spec import ModelSpecError
from vit_deploy.embed.embedder import Embedder, cached_export, weights_hash
from vit_deploy.errors import ArtifactError, InputShapeError, NoClassifierError
from vit_deploy.runtime import load_backend

# fp32 ONNX Runtime vs PyTorch eager on the same weights: summation order differs only.
BACKEND_ATOL = 1e-5


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def ort(artifact):
    return Embedder.from_artifact(artifact)


@pytest.fixture(scope="module")
def eager():
    return Embedder(load_backend(tiny_model(), backend="torch"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Twelve PNGs of assorted sizes (none of them the model's 32x32)."""
    root = tmp_path_factory.mktemp("embedder-images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        path = root / f"{i:02d}.png"
        random_image(rng, int(rng.integers(24, 120)), int(rng.integers(24, 120))).save(path)
        paths.append(path)
    return paths


def test_embed_shapes_dtype_and_unit_norm(ort, images):
    emb = ort.embed(images)
    assert emb.shape == (len(images), 32) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert ort.embed(images[0]).shape == (1, 32)  # a single item
    assert ort.embed([]).shape == (0, 32)


def test_unnormalised_is_the_backend_embedding(ort, images):
    raw = ort.embed(images[:3], normalize=False)
    pixels = np.stack([_pre(ort, p) for p in images[:3]])
    np.testing.assert_array_equal(raw, ort.backend(pixels)["embedding"])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(
        ort.embed(images[:3]), raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6
    )


def _pre(embedder, item):
    from vit_deploy.preprocess import preprocess_one

    return preprocess_one(item, embedder.preprocess)


def test_preprocessing_comes_from_the_manifest(ort, artifact):
    import json

    from vit_deploy.config import Preprocess

    manifest = json.loads((artifact / "manifest.json").read_text())
    assert ort.preprocess == Preprocess.from_dict(manifest["preprocess"])
    assert ort.preprocess.interpolation == "bilinear" and ort.preprocess.crop_pct == 0.875


def test_batch_size_does_not_change_results(ort, images):
    np.testing.assert_allclose(
        ort.embed(images, batch_size=1), ort.embed(images, batch_size=5), atol=BACKEND_ATOL
    )


def test_every_input_kind_gives_the_same_embedding(ort, images):
    path = images[3]
    arr = np.array(Image.open(path).convert("RGB"))
    items = [
        str(path),
        path,
        Image.open(path),
        arr,
        torch.from_numpy(arr).permute(2, 0, 1).contiguous(),
        torch.from_numpy(_pre(ort, path)),  # preprocessed, CHW float
    ]
    emb = ort.embed(items)
    np.testing.assert_allclose(emb, np.repeat(emb[:1], len(items), axis=0), atol=1e-6)
    batch = np.stack([_pre(ort, p) for p in images[:4]])  # a preprocessed 4-D batch
    np.testing.assert_allclose(ort.embed(batch), ort.embed(images[:4]), atol=1e-6)
    np.testing.assert_allclose(ort.embed(iter(images[:4])), ort.embed(images[:4]), atol=1e-6)


def test_onnx_runtime_matches_pytorch(ort, eager, images):
    assert (ort.name, eager.name) == ("ort", "torch")
    a, b = ort.embed(images, normalize=False), eager.embed(images, normalize=False)
    np.testing.assert_allclose(a, b, atol=BACKEND_ATOL)
    assert [r[0][0] for r in ort.classify(images)] == [r[0][0] for r in eager.classify(images)]


def test_classify_top_k(ort, images):
    results = ort.classify(images, top_k=2)
    assert len(results) == len(images)
    pixels = np.stack([_pre(ort, p) for p in images])
    logits = ort.backend(pixels)["logits"]
    for row, result in zip(logits, results, strict=True):
        assert len(result) == 2 and all(label in LABELS for label, _ in result)
        assert result[0][0] == LABELS[int(np.argmax(row))]
        assert 1.0 >= result[0][1] >= result[1][1] > 0.0
    everything = ort.classify(images[0], top_k=10)[0]  # top_k above the class count
    assert len(everything) == 3 and sum(p for _, p in everything) == pytest.approx(1.0)


def test_classify_needs_a_head_and_labels(tmp_path):
    headless = Embedder(load_backend(tiny_model(num_classes=0), backend="torch"))
    img = random_image(np.random.default_rng(0), 40, 40)
    assert headless.embed(img).shape == (1, 32)
    with pytest.raises(NoClassifierError, match="needs a classification head"):
        headless.classify(img)
    model = tiny_model()
    model.config = model.config.replace(labels=())
    unnamed = Embedder(load_backend(model, backend="torch"))
    with pytest.raises(NoClassifierError, match="needs 3 label names, got 0"):
        unnamed.classify(img)
    named = Embedder(load_backend(model, backend="torch"), labels=["a", "b", "c"])
    assert named.classify(img, top_k=1)[0][0][0] in ("a", "b", "c")


@pytest.mark.parametrize("which", ["ort", "eager"])
def test_threads_give_the_same_results_as_one_at_a_time(which, ort, eager, images):
    embedder = {"ort": ort, "eager": eager}[which]
    jobs = [images[i : i + 3] for i in range(0, len(images), 3)] * 3
    sequential = [embedder.embed(job, batch_size=2) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda job: embedder.embed(job, batch_size=2), jobs))
    for a, b in zip(sequential, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_missing_artifact_is_a_typed_error(tmp_path):
    with pytest.raises(ArtifactError, match="no such path"):
        Embedder.from_artifact(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="manifest.json"):
        Embedder.from_artifact(tmp_path / "empty")


def test_wrong_size_preprocessed_tensor_is_an_input_shape_error(ort):
    with pytest.raises(InputShapeError, match=r"\(3, 32, 32\), got \(3, 64, 64\)"):
        ort.embed(torch.zeros(3, 64, 64))
    with pytest.raises(InputShapeError, match=r"\(B, 3, 32, 32\), got \(2, 3, 48, 48\)"):
        ort.embed(np.zeros((2, 3, 48, 48), np.float32))


def test_images_of_another_size_are_resized(ort):
    rng = np.random.default_rng(1)
    imgs = [random_image(rng, 224, 224), random_image(rng, 17, 300), random_image(rng, 5, 5)]
    assert ort.embed(imgs).shape == (3, 32)


def test_modes_embed(ort, tmp_path):
    rng = np.random.default_rng(2)
    base = random_image(rng, 50, 60)
    base.convert("L").save(tmp_path / "gray.png")
    base.convert("RGBA").save(tmp_path / "rgba.png")
    base.convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65536, (50, 60), dtype=np.uint16)).save(tmp_path / "16.png")
    emb = ort.embed(sorted(tmp_path.iterdir()))
    assert emb.shape == (4, 32) and np.isfinite(emb).all()
    np.testing.assert_allclose(ort.embed(tmp_path / "rgba.png"), ort.embed(base), atol=1e-6)


def test_from_model_reuses_the_cached_export(tmp_path_factory, monkeypatch):
    from vit_deploy.export.onnx import pipeline

    directory = tiny_artifact(tmp_path_factory)  # exported once for the session
    calls = []
    monkeypatch.setattr(pipeline, "export_onnx_artifact", lambda *a, **k: calls.append(a))
    again = cached_export(tiny_model(), directory.parent, FAST_EXPORT)
    assert again == directory and calls == []
    emb = Embedder.from_model(tiny_model(), cache_dir=directory.parent, export_options=FAST_EXPORT)
    assert emb.name == "ort" and calls == []
    changed = tiny_model()
    with torch.no_grad():
        changed.head.bias.add_(1.0)
    assert weights_hash(changed) != weights_hash(tiny_model())
    assert cached_export(changed, directory.parent, FAST_EXPORT) != directory
    assert len(calls) == 1  # new weights, new key: exported (by the stub here)


def test_from_model_torch_and_bad_sources(tmp_path):
    assert Embedder.from_model(tiny_model(), backend="torch").name == "torch"
    with pytest.raises(ModelSpecError, match="preset name"):  # the one resolver's error
        Embedder.from_model(str(tmp_path / "missing"), backend="torch")


def test_embedding_modules_do_not_import_torch():
    """vit-embed on ONNX Runtime needs no torch (hundreds of MiB and seconds of start-up).
    The package __init__ loads the model (and torch) today, so the package is registered
    here without running it, to check these modules on their own."""
    import subprocess
    import sys
    from pathlib import Path

    import vit_deploy

    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('vit_deploy')\n"
        f"pkg.__path__ = [{str(Path(vit_deploy.__file__).parent)!r}]\n"
        "sys.modules['vit_deploy'] = pkg\n"
        "import vit_deploy.preprocess, vit_deploy.embed.embedder, vit_deploy.embed.pipeline\n"
        "import vit_deploy.embed.writers, vit_deploy.embed.workdir, vit_deploy.cli.embed\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
