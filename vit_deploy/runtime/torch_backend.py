"""PyTorch eager fp32: the reference every exported artifact is compared with."""

from __future__ import annotations

import numpy as np
import torch

from vit_deploy.model.vit import VisionTransformer
from vit_deploy.runtime.base import Backend, default_output_names


class TorchBackend(Backend):
    """Runs a ``VisionTransformer`` eagerly. Named ``torch-triton`` when its attention is
    the fused Triton kernel, ``torch`` otherwise (math and sdpa are both stock torch)."""

    def __init__(self, model: VisionTransformer, output_names: list[str] | None = None):
        cfg = model.config
        super().__init__(cfg, output_names or default_output_names(cfg), manifest=None)
        self.model = model.eval()
        self.name = "torch-triton" if model.attention == "triton" else "torch"
        self.device = next(model.parameters()).device

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device)
            logits, embedding = self.model.forward_all(x)
        outputs = {"logits": logits, "embedding": embedding}
        return {k: outputs[k].float().cpu().numpy() for k in self.output_names}
