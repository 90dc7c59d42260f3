"""Preprocessing against timm's eval transform, on real photographs that ship with
scikit-image (no download), and every image mode we convert."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_deploy.config import Preprocess
from vit_deploy.errors import InputDTypeError, InputShapeError
from vit_deploy.preprocess import load_image, preprocess_batch, preprocess_one, to_rgb

timm = pytest.importorskip("timm")
skimage_data = pytest.importorskip("skimage.data")

# Bundled with scikit-image 0.26 (the rest of skimage.data needs pooch downloads).
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Both sides resize with PIL's own filters and crop the same box, so the uint8 pixels are
# identical; the float steps (/255, -mean, /std) are the same float32 operations in the
# same order. 1e-6 only allows for a last-bit difference between numpy and torch.
PIXEL_ATOL = 1e-6


def photo_paths() -> list[Path]:
    paths = [Path(skimage_data.data_dir) / name for name in PHOTOS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"scikit-image does not bundle {missing} here")
    return paths


def timm_eval_transform(pre: Preprocess):
    return timm.data.create_transform(
        input_size=(3, pre.img_size, pre.img_size),
        interpolation=pre.interpolation,
        crop_pct=pre.crop_pct,
        mean=pre.mean,
        std=pre.std,
        is_training=False,
    )


@pytest.fixture(scope="module")
def timm_vit_small():
    return timm.create_model("vit_small_patch16_224", pretrained=False, depth=2).eval()


def pre_from_timm(data_config: dict) -> Preprocess:
    return Preprocess(
        img_size=data_config["input_size"][-1],
        crop_pct=data_config["crop_pct"],
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
    )


OTHER_CONFIGS = [
    Preprocess(160, 0.875, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
    Preprocess(
        96,
        1.0,
        "bicubic",
        (0.48145466, 0.4578275, 0.40821073),
        (0.26862954, 0.26130258, 0.27577711),
    ),
    Preprocess(64, 0.95, "nearest", IMAGENET_MEAN, IMAGENET_STD),
]


def test_resize_size_follows_timm():
    for img_size, crop_pct in [(224, 0.9), (224, 0.875), (384, 1.0), (160, 0.95), (32, 0.875)]:
        assert Preprocess(img_size, crop_pct).resize_size == math.floor(img_size / crop_pct)


def test_vit_small_config_matches_timm_resolution(timm_vit_small):
    data_config = timm.data.resolve_data_config({}, model=timm_vit_small)
    pre = pre_from_timm(data_config)
    assert (pre.img_size, pre.crop_pct, pre.interpolation) == (224, 0.9, "bicubic")
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("config", ["timm-vit_small", *range(len(OTHER_CONFIGS))])
def test_pixels_match_timm_eval_transform(config, timm_vit_small):
    if config == "timm-vit_small":
        data_config = timm.data.resolve_data_config({}, model=timm_vit_small)
        pre, transform = pre_from_timm(data_config), timm.data.create_transform(**data_config)
    else:
        pre = OTHER_CONFIGS[config]
        transform = timm_eval_transform(pre)
    for path in photo_paths():
        expected = transform(Image.open(path).convert("RGB")).numpy()  # timm's loader
        got = preprocess_one(path, pre)
        assert got.shape == expected.shape == (3, pre.img_size, pre.img_size)
        assert got.dtype == np.float32 and np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=0, atol=PIXEL_ATOL, err_msg=path.name)


def test_embeddings_match_timm_model(timm_vit_small):
    from vit_deploy import create_model
    from vit_deploy.embed.embedder import Embedder
    from vit_deploy.runtime import load_backend

    reference = timm_vit_small
    ours = create_model("vit_small_patch16_224", depth=2)
    ours.load_state_dict(reference.state_dict())
    data_config = timm.data.resolve_data_config({}, model=reference)
    transform = timm.data.create_transform(**data_config)
    paths = photo_paths()
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        expected = reference.forward_head(reference.forward_features(pixels), pre_logits=True)
    embedder = Embedder(load_backend(ours, backend="torch"))
    got = embedder.embed(paths, batch_size=2, normalize=False)
    expected = expected.numpy()
    assert got.shape == expected.shape == (len(paths), 384) and np.isfinite(got).all()
    cosine = (
        (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.9999, cosine


# ---------------------------------------------------------------------- image modes

PRE = Preprocess(img_size=32, crop_pct=0.875, interpolation="bicubic")


def rgb_array(h=40, w=52, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = Image.fromarray(rgb_array()[:, :, 0], mode="L")
    gray.save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").mode == "RGB"
    x = preprocess_one(tmp_path / "g.png", PRE)
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[0], x[2])
    np.testing.assert_array_equal(x, preprocess_one(gray.convert("RGB"), PRE))
    np.testing.assert_array_equal(x, preprocess_one(np.asarray(gray), PRE))  # HW array


def test_rgba_drops_alpha_like_timm_loader(tmp_path):
    rgb = rgb_array()
    alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "a.png")
    expected = preprocess_one(Image.fromarray(rgb), PRE)
    np.testing.assert_array_equal(preprocess_one(tmp_path / "a.png", PRE), expected)
    np.testing.assert_array_equal(preprocess_one(np.dstack([rgb, alpha]), PRE), expected)


def test_16bit_png_scales_full_range_to_8_bits(tmp_path):
    v = rgb_array()[:, :, 0]
    Image.fromarray(v.astype(np.uint16) * 257).save(tmp_path / "d.png")  # 0..65535
    img = Image.open(tmp_path / "d.png")
    assert img.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[:, :, 0], v)
    expected = preprocess_one(Image.fromarray(v, mode="L"), PRE)
    np.testing.assert_array_equal(preprocess_one(tmp_path / "d.png", PRE), expected)
    np.testing.assert_array_equal(preprocess_one(v.astype(np.uint16) * 257, PRE), expected)


def test_mode_I_with_8bit_values_is_not_stretched():
    v = rgb_array()[:, :, 0] // 2  # 0..127: a stretch to the maximum would change it
    img = Image.fromarray(v, mode="L").convert("I")
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[:, :, 0], v)


def test_cmyk_jpeg_converted(tmp_path):
    Image.fromarray(rgb_array()).convert("CMYK").save(tmp_path / "c.jpg")
    raw = Image.open(tmp_path / "c.jpg")
    assert raw.mode == "CMYK"
    x = preprocess_one(tmp_path / "c.jpg", PRE)
    assert x.shape == (3, 32, 32) and np.isfinite(x).all()
    transform = timm_eval_transform(PRE)
    expected = transform(Image.open(tmp_path / "c.jpg").convert("RGB")).numpy()
    np.testing.assert_allclose(x, expected, rtol=0, atol=PIXEL_ATOL)


def test_palette_and_bilevel_converted():
    rgb = Image.fromarray(rgb_array())
    for img in (rgb.convert("P"), rgb.convert("1"), rgb.convert("LA")):
        np.testing.assert_array_equal(
            preprocess_one(img, PRE), preprocess_one(img.convert("RGB"), PRE)
        )


# ---------------------------------------------------------------------- input kinds


def test_every_input_kind_gives_the_same_pixels(tmp_path):
    arr = rgb_array()
    Image.fromarray(arr).save(tmp_path / "x.png")
    expected = preprocess_one(tmp_path / "x.png", PRE)
    for item in (
        str(tmp_path / "x.png"),
        Image.fromarray(arr),
        arr,
        torch.from_numpy(arr).permute(2, 0, 1).contiguous(),  # CHW uint8, like read_image
        torch.from_numpy(expected),  # already preprocessed: passed through
    ):
        np.testing.assert_array_equal(preprocess_one(item, PRE), expected)
    batch = preprocess_batch([arr, tmp_path / "x.png"], PRE)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32


def test_other_image_sizes_are_resized():
    for h, w in [(8, 8), (31, 400), (600, 33)]:
        assert preprocess_one(rgb_array(h, w), PRE).shape == (3, 32, 32)


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(InputShapeError, match=r"must have shape \(3, 32, 32\), got \(3, 64, 64\)"):
        preprocess_one(torch.zeros(3, 64, 64), PRE)
    with pytest.raises(InputShapeError, match="1, 3 or 4 channels"):
        preprocess_one(np.zeros((10, 10, 2), np.uint8), PRE)
    with pytest.raises(InputDTypeError, match="int64"):
        preprocess_one(np.zeros((3, 32, 32), np.int64), PRE)
    with pytest.raises(InputDTypeError, match="got list"):
        preprocess_one([1, 2, 3], PRE)
