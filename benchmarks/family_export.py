"""ViT-B export time through both gates for a timm architecture, random weights.
Usage: python benchmarks/family_export.py vit_base_patch16_clip_224 fp32"""

# ruff: noqa: E402  (the test helpers are imported after putting tests/ on the path)

import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, "tests")
warnings.simplefilter("ignore")
import test_families as T

from vit_deploy.checkpoints.load import load_model
from vit_deploy.export.onnx.pipeline import export_onnx_artifact
from vit_deploy.export.options import OnnxExportOptions

tmp = Path(tempfile.mkdtemp())
arch = sys.argv[1]
prec = sys.argv[2]
_, folder = T.timm_hub_folder(tmp, arch, {})
m = load_model(folder)
t = time.perf_counter()
r = export_onnx_artifact(m, tmp / "a", OnnxExportOptions(precision=prec))
sp = r.manifest["source_parity"]
print(
    arch,
    prec,
    f"{time.perf_counter() - t:.1f} s",
    "gate",
    r.manifest["parity"]["passed"],
    "source",
    sp.get("passed"),
    max(sp.get("max_abs_diff_over_scale", {0: 0}).values()),
    r.manifest["export"]["stage_seconds"],
)
