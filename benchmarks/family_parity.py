"""Per family and source (timm, transformers, open_clip): max |ours - source| / output scale
in fp32, random weights. Usage: python benchmarks/family_parity.py (from the repo root)."""

# ruff: noqa: E402  (the test helpers are imported after putting tests/ on the path)

import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, "tests")
warnings.simplefilter("ignore")
import test_families as T

from vit_deploy.checkpoints.load import load_model

tmp = Path(tempfile.mkdtemp())
for arch, args in sorted(T.TIMM_FAMILIES.items()):
    ref, folder = T.timm_hub_folder(tmp, arch, args)
    ours = load_model(folder)
    x = T.pixels(ours.config.img_size)
    logits, pre = T.timm_outputs(ref, x)
    gl, ge = ours.forward_all(x)
    theirs = logits if ours.config.proj_dim else pre
    print(f"timm {arch}: {float((ge - theirs).abs().max() / theirs.abs().max()):.1e}")
for name, mk in sorted(T.HF_CASES.items()):
    net = T.randomize(getattr(T.transformers, name)(mk()))
    ours = load_model(T.hf_folder(tmp, net))
    x = T.pixels(32)
    kind, theirs = T.hf_reference(net, x)
    gl, ge = ours.forward_all(x)
    got = gl if kind == "logits" else ge
    print(f"HF {name} ({kind}): {float((got - theirs).abs().max() / theirs.abs().max()):.1e}")
for q in (True, False):
    d = tmp / f"oc{q}"
    d.mkdir()
    net, folder = T.open_clip_checkpoint(d, q)
    ours = load_model(folder)
    x = T.pixels(32)
    with torch.no_grad():
        theirs = net.encode_image(x)
    print(
        f"open_clip quick_gelu={q}: {float((ours.embed(x) - theirs).abs().max() / theirs.abs().max()):.1e}"
    )
