"""Train the bundled default model: a small ViT on scikit-learn's handwritten digits.

Seeded and reproducible on a CPU in a few minutes:

    .venv/bin/python scripts/train_default_model.py

Writes (package data, committed):
  vit_deploy/assets/default_model/   config.json + model.safetensors (our format)
  vit_deploy/assets/heldout/         the held-out digits as 64x64 PNGs + index.json
  vit_deploy/assets/default_model/training.json   accuracy, seed, epochs, time

The held-out images are written first and the training images go through the
same decode + preprocessing path as serving (PNG -> resize -> normalise), so
the accuracy measured on decoded files is the accuracy a user gets.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from vit_deploy.assets import DEFAULT_MODEL_DIR, HELDOUT_DIR, heldout_set
from vit_deploy.checkpoints.load import save_model
from vit_deploy.config import Preprocess, ViTConfig
from vit_deploy.model.vit import create_model
from vit_deploy.preprocess import preprocess_batch

STORED_SIZE = 64  # PNGs are stored larger than the model input, so resize is exercised
LABELS = tuple(str(i) for i in range(10))


def default_config() -> ViTConfig:
    return ViTConfig(
        img_size=32,
        patch_size=4,  # 8 x 8 patches + CLS = 65 tokens
        in_chans=3,
        num_classes=10,
        embed_dim=128,
        depth=4,
        num_heads=2,  # head dim 64, as ViT-S/B/L
        mlp_ratio=4.0,
        labels=LABELS,
        preprocess=Preprocess(img_size=32, crop_pct=1.0, interpolation="bicubic"),
    )


def digit_to_image(digit: np.ndarray) -> Image.Image:
    """An 8x8 digit (values 0..16) as a 64x64 RGB image, white ink on black."""
    small = Image.fromarray((digit * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
    return small.resize((STORED_SIZE, STORED_SIZE), Image.Resampling.BICUBIC).convert("RGB")


def write_heldout(images: np.ndarray, labels: np.ndarray) -> None:
    if HELDOUT_DIR.exists():
        shutil.rmtree(HELDOUT_DIR)
    HELDOUT_DIR.mkdir(parents=True)
    index = []
    for i, (digit, label) in enumerate(zip(images, labels, strict=True)):
        name = f"{i:04d}_{LABELS[label]}.png"
        digit_to_image(digit).save(HELDOUT_DIR / name)
        index.append({"file": name, "label": int(label)})
    (HELDOUT_DIR / "index.json").write_text(json.dumps({"labels": LABELS, "images": index}))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random rotation, scale and shift: digits are not all centred alike."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) - 0.5) * (2 * math.radians(12))
    scale = 1.0 + (torch.rand(b, generator=gen) - 0.5) * 0.2
    shift = (torch.rand(b, 2, generator=gen) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with the normalised value of black, the background
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - background, grid, align_corners=False) + background


@torch.no_grad()
def accuracy(model, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    preds = torch.cat([model(chunk).argmax(-1) for chunk in pixels.split(256)])
    return (preds == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=args.seed, stratify=digits.target
    )
    cfg = default_config()
    write_heldout(x_test, y_test)

    # Train on the same decode + preprocess path the held-out set goes through.
    train_pixels = preprocess_batch([digit_to_image(d) for d in x_train], cfg.preprocess)
    train_labels = torch.from_numpy(y_train).long()
    held = heldout_set()
    test_pixels = preprocess_batch([p for p, _ in held], cfg.preprocess)
    test_labels = torch.tensor([label for _, label in held])

    model = create_model(cfg, seed=args.seed).train()
    batch = 64
    steps = args.epochs * math.ceil(len(train_pixels) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    warmup = steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))),
    )
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_pixels), generator=gen)
        for idx in order.split(batch):
            loss = F.cross_entropy(
                model(augment(train_pixels[idx], gen)), train_labels[idx], label_smoothing=0.1
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if epoch % 10 == 9 or epoch == args.epochs - 1:
            acc = accuracy(model, test_pixels, test_labels)
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.3f}  held-out acc {acc:.4f}")
    seconds = time.perf_counter() - start

    model.eval()
    if DEFAULT_MODEL_DIR.exists():  # ours to replace, training report included
        shutil.rmtree(DEFAULT_MODEL_DIR)
    save_model(model, DEFAULT_MODEL_DIR)
    report = {
        "dataset": "scikit-learn load_digits (8x8, upsampled to 64x64 PNG, resized to 32)",
        "train_images": len(train_pixels),
        "heldout_images": len(held),
        "heldout_accuracy": accuracy(model, test_pixels, test_labels),
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    (DEFAULT_MODEL_DIR / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
