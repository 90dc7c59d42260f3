"""vit-inspect and vit_deploy.inspect.maps: arrays checked against hand computations,
figures checked for being real PNGs, the CLI end to end and its error cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vit_deploy import ViTConfig, create_model
from vit_deploy.checkpoints.load import save_model
from vit_deploy.cli.inspect import main
from vit_deploy.config import PRESETS, Preprocess
from vit_deploy.errors import ConfigError
from vit_deploy.inspect import maps as vz
from vit_deploy.inspect import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ("ant", "bee", "cat", "dog", "eel")


def tiny_config(**changes) -> ViTConfig:
    cfg = ViTConfig(
        img_size=32,
        patch_size=8,  # 4 x 4 patches
        num_classes=5,
        embed_dim=32,
        depth=2,
        num_heads=4,
        labels=LABELS,
        preprocess=Preprocess(img_size=32, crop_pct=1.0),
    )
    return cfg.replace(**changes) if changes else cfg


@pytest.fixture(scope="module")
def model():
    return create_model(tiny_config(), seed=1)


@pytest.fixture(scope="module")
def model_no_cls():
    return create_model(tiny_config(class_token=False, global_pool="avg"), seed=2)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def checkpoint(tmp_path, model):
    return save_model(model, tmp_path / "ckpt")


def is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)


# ---- arrays ---------------------------------------------------------------------------


def test_attention_rows_sum_to_one(model, pixels):
    probs = vz.attention_probs(model, pixels)
    assert probs.shape == (2, 4, 17, 17)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


def test_attention_to_patches_reads_the_query_row(model, pixels):
    probs = vz.attention_probs(model, pixels)
    maps = vz.attention_to_patches(model, pixels, layer=1, heads=[3, 0], query="cls")
    assert maps.shape == (2, 4, 4)
    np.testing.assert_allclose(maps[0].ravel(), probs[1, 3, 0, 1:])
    np.testing.assert_allclose(maps[1].ravel(), probs[1, 0, 0, 1:])
    # patch (1, 2) is token row 1 + 1*4 + 2 = 7
    row7 = vz.attention_to_patches(model, pixels, layer=0, heads=None, query=7)
    assert row7.shape == (4, 4, 4)
    np.testing.assert_allclose(row7.reshape(4, 16), probs[0, :, 7, 1:])


def test_attention_without_class_token_sums_to_one_over_patches(model_no_cls, pixels):
    maps = vz.attention_to_patches(model_no_cls, pixels, layer=0, query="5")
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-6)
    with pytest.raises(ConfigError, match="no class token.*pass a token row"):
        vz.attention_to_patches(model_no_cls, pixels, layer=0, query="cls")


def test_pos_embed_similarity_has_ones_on_the_diagonal(model):
    sim = vz.pos_embed_similarity(model)
    assert sim.shape == (16, 4, 4)
    flat = sim.reshape(16, 16)
    np.testing.assert_allclose(np.diag(flat), 1.0, atol=1e-12)
    np.testing.assert_allclose(flat, flat.T, atol=1e-12)
    assert (np.abs(flat) <= 1 + 1e-12).all()
    # the CLS embedding is left out: patch 0 is pos_embed row 1
    pos = model.pos_embed.detach()[0].double().numpy()
    a, b = pos[1], pos[6]
    assert sim[0, 1, 1] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def hand_rollout(probs: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema written out for two layers with explicit matmuls."""
    n = probs.shape[-1]
    a0 = probs[0].mean(axis=0) + np.eye(n)
    a0 = a0 / a0.sum(axis=1, keepdims=True)
    a1 = probs[1].mean(axis=0) + np.eye(n)
    a1 = a1 / a1.sum(axis=1, keepdims=True)
    return np.matmul(a1, a0)


def test_rollout_matches_a_hand_computation(model, pixels):
    probs = vz.attention_probs(model, pixels)
    rollout = vz.attention_rollout(model, pixels)
    assert rollout.shape == (4, 4)
    np.testing.assert_allclose(rollout.ravel(), hand_rollout(probs)[0, 1:], atol=1e-12)
    # rows of the rollout matrix stay distributions, so CLS + patches sum to 1
    assert hand_rollout(probs)[0, 0] + rollout.sum() == pytest.approx(1.0)


def test_rollout_without_class_token_averages_query_rows(model_no_cls, pixels):
    probs = vz.attention_probs(model_no_cls, pixels)
    rollout = vz.attention_rollout(model_no_cls, pixels)
    np.testing.assert_allclose(rollout.ravel(), hand_rollout(probs).mean(axis=0), atol=1e-12)


def test_bad_layer_head_and_query_raise_expected_vs_got(model, pixels):
    with pytest.raises(ConfigError, match=r"layer: expected 0\.\.1, got 2"):
        vz.attention_to_patches(model, pixels, layer=2)
    with pytest.raises(ConfigError, match=r"heads: expected indices in 0\.\.3, got \[4\]"):
        vz.attention_to_patches(model, pixels, layer=0, heads=[0, 4])
    with pytest.raises(ConfigError, match=r"query: expected a token row in 0\.\.16, got 17"):
        vz.attention_to_patches(model, pixels, layer=0, query=17)


def test_top_k_uses_config_labels_and_is_sorted(model, pixels):
    preds = vz.top_k(model, pixels, k=3)
    assert [label in LABELS for label, _ in preds] == [True] * 3
    probs = [p for _, p in preds]
    assert probs == sorted(probs, reverse=True)
    full = torch.softmax(model(pixels).double(), -1)[0]
    assert probs[0] == pytest.approx(full.max().item())
    assert len(vz.top_k(model, pixels, k=50)) == 5  # clipped to the number of classes


def test_labels_fall_back_to_class_n(pixels):
    unlabeled = create_model(tiny_config(labels=(), num_classes=3))
    names, note = vz.label_names(unlabeled)
    assert names == ["class 0", "class 1", "class 2"] and note is None
    assert vz.top_k(unlabeled, pixels, k=1)[0][0].startswith("class ")


def test_thousand_class_head_gets_imagenet_names():
    pytest.importorskip("timm")
    names, note = vz.label_names(create_model(tiny_config(labels=(), num_classes=1000)))
    assert len(names) == 1000 and "ImageNet-1k" in note
    assert names[1].startswith("goldfish") and names[207] == "golden retriever"


def test_image_paths_go_through_preprocessing(model, image_file):
    x = vz.as_pixels(model, image_file)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    shown = vz.denormalize(model, x)
    assert shown.shape == (32, 32, 3) and shown.min() >= 0 and shown.max() <= 1


# ---- figures --------------------------------------------------------------------------


def test_figures_are_written_as_pngs_atomically(model, pixels, tmp_path):
    image = vz.denormalize(model, pixels)
    probs = vz.attention_probs(model, pixels)
    written = [
        plots.plot_input(image, 4, tmp_path / "a.png"),
        plots.plot_pos_embed_similarity(vz.pos_embed_similarity(model), tmp_path / "b.png"),
        plots.plot_attention(
            image,
            vz.attention_to_patches(model, pixels, 1, [0, 1, 2], 7, probs=probs),
            tmp_path / "sub" / "c.png",
            [0, 1, 2],
            "title",
            query_patch=(1, 2),
        ),
        plots.plot_rollout(
            image, vz.attention_rollout(model, pixels, probs=probs), tmp_path / "d.png"
        ),
    ]
    for path in written:
        assert is_png(path), path
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


# ---- CLI ------------------------------------------------------------------------------


def test_cli_end_to_end_on_a_checkpoint(checkpoint, image_file, tmp_path, capsys):
    out = tmp_path / "figs"
    rc = main(
        ["--model", str(checkpoint), "--image", str(image_file), "--top-k", "3", "--out", str(out)]
    )
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "top-3 predictions:" in stdout and "%" in stdout
    assert sum(label in stdout for label in LABELS) == 3
    names = {"input.png", "pos_embed_similarity.png", "attention_layer1_cls.png", "rollout.png"}
    assert {p.name for p in out.iterdir()} == names
    assert all(is_png(out / name) for name in names)


def test_cli_layer_heads_and_query_row(checkpoint, image_file, tmp_path, capsys):
    out = tmp_path / "figs"
    argv = ["--model", str(checkpoint), "--image", str(image_file), "--out", str(out)]
    rc = main([*argv, "--layer", "0", "--heads", "1,3", "--query", "7"])
    assert rc == 0, capsys.readouterr().err
    assert is_png(out / "attention_layer0_row7.png")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "5"], "layer: expected 0..1, got 5"),
        (["--heads", "0", "9"], "heads: expected indices in 0..3, got [9]"),
        (["--heads", "x"], "--heads: expected head indices"),
        (["--query", "99"], "query: expected a token row in 0..16, got 99"),
        (["--query", "top"], "query: expected 'cls' or a token row, got 'top'"),
        (["--top-k", "0"], "--top-k: expected a positive int, got 0"),
    ],
)
def test_cli_bad_options_are_one_line_errors(
    checkpoint, image_file, tmp_path, capsys, extra, message
):
    argv = ["--model", str(checkpoint), "--image", str(image_file), "--out", str(tmp_path / "o")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vit-inspect: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_query_cls_without_class_token(model_no_cls, image_file, tmp_path, capsys):
    ckpt = save_model(model_no_cls, tmp_path / "nocls")
    assert main(["--model", str(ckpt), "--image", str(image_file), "--out", str(tmp_path)]) == 2
    assert "no class token" in capsys.readouterr().err
    rc = main(
        ["--model", str(ckpt), "--image", str(image_file), "--query", "0", "--out", str(tmp_path)]
    )
    assert rc == 0
    assert is_png(tmp_path / "attention_layer1_row0.png")


def test_cli_defaults_to_the_bundled_model(tmp_path, capsys):
    assets = pytest.importorskip("vit_deploy.assets")
    if not (assets.DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        pytest.skip("the bundled default model is not trained in this checkout")
    image, _ = assets.heldout_set()[0]
    assert main(["--image", str(image), "--top-k", "1", "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert "the bundled default model" in stdout
    top1 = stdout.split("1. ")[1].split()[1]
    assert top1 in assets.load_default_model().config.labels
    assert is_png(tmp_path / "rollout.png")


def test_cli_preset_warns_about_random_weights(image_file, tmp_path, capsys, monkeypatch):
    # a tiny stand-in preset: a real one (224 px, 12 layers) takes seconds on 2 cores
    monkeypatch.setitem(PRESETS, "tiny_test_preset", tiny_config(labels=()))
    out = tmp_path / "figs"
    argv = ["--model", "tiny_test_preset", "--image", str(image_file), "--heads", "all"]
    assert main([*argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "tiny_test_preset is a preset with random weights" in captured.err
    assert "class 0" in captured.out
    assert is_png(out / "attention_layer1_cls.png")


def test_cli_missing_image_and_model(checkpoint, image_file, tmp_path, capsys):
    assert main(["--model", str(checkpoint), "--image", str(tmp_path / "nope.png")]) == 2
    assert "--image: expected an image file" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nope"), "--image", str(image_file)]) == 2
    assert "--model: expected a preset name" in capsys.readouterr().err
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    assert main(["--model", str(checkpoint), "--image", str(not_an_image)]) == 2
    assert "could not read" in capsys.readouterr().err


def test_cli_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vit_deploy.cli.inspect", "--image", str(tmp_path / "nope.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("vit-inspect: error: --image") and "Traceback" not in proc.stderr


def test_cli_help_says_where_attention_comes_from():
    text = " ".join(main.__globals__["build_parser"]().format_help().split())
    assert "reference (math) attention path" in text
    assert "never forms the N x N attention matrix" in text
