"""The one model specification: what the user named, parsed in one place.

Every tool that takes a model (``vit-export``, ``vit-bench``, ``vit-embed``, ``vit-inspect``,
``Embedder.from_model``, the engine rebuild command) resolves it here, with the same rules
and the same errors:

- nothing / ``"default"``: the bundled default model (trained digits ViT);
- a preset name: the architecture with seeded random weights (a warning says so);
- a path: a local checkpoint in any layout ``load_model`` reads, or an exported artifact
  directory (``manifest.json``), which ``load()`` refuses: artifacts run on a backend.

``img_size``, ``config`` and ``num_heads`` change the weights or the architecture, so
they are part of the spec. A manifest stores ``to_dict()``; ``cli_args()`` turns it back
into the ``--model ... --img-size ...`` flags that rebuild the same weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vit_deploy.errors import ConfigError

DEFAULT, PRESET, CHECKPOINT, ARTIFACT, OBJECT = (
    "default",
    "preset",
    "checkpoint",
    "artifact",
    "object",
)
KINDS = (DEFAULT, PRESET, CHECKPOINT, ARTIFACT, OBJECT)
DEFAULT_NAMES = (None, "", "default")
# "google/vit-base-patch16-224", "timm/vit_base_patch16_224.augreg_in21k", "hf-hub:org/name"
_HUB_NAME = re.compile(r"^(hf-hub:|hf_hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSpecError(ConfigError):
    """A model specification that names nothing loadable."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    value: str | None = None  # preset name or path (as given); None for the default
    img_size: int | None = None
    config: str | None = None  # architecture name deciding what tensor shapes do not show
    num_heads: int | None = None

    @classmethod
    def parse(
        cls,
        text: str | os.PathLike | None = None,
        *,
        img_size: int | None = None,
        config: str | None = None,
        num_heads: int | None = None,
    ) -> ModelSpec:
        """Classify what the user named; typed errors for anything that names nothing."""
        _check_positive("img_size", img_size)
        _check_positive("num_heads", num_heads)
        if text in DEFAULT_NAMES:
            return cls(DEFAULT, None, img_size, config, num_heads)
        text = os.fspath(text)
        from vit_deploy.config import PRESETS

        if text in PRESETS:
            return cls(PRESET, text, img_size, config, num_heads)
        path = Path(text)
        if path.exists():
            kind = ARTIFACT if (path / "manifest.json").is_file() else CHECKPOINT
            return cls(kind, text, img_size, config, num_heads)
        raise ModelSpecError(_not_found_message(text, sorted(PRESETS)), option="model")

    # ------------------------------------------------------------------ what it names

    @property
    def name(self) -> str:
        """Short, for default output paths."""
        if self.kind == DEFAULT:
            return "default"
        if self.kind == PRESET:
            return str(self.value)
        path = Path(str(self.value))
        return (path.stem if path.is_file() else path.name) or "model"

    @property
    def description(self) -> str:
        what = {
            DEFAULT: "the bundled default model",
            PRESET: f"preset {self.value} (random weights)",
            CHECKPOINT: f"checkpoint {self.value}",
            ARTIFACT: f"artifact {self.value}",
            OBJECT: "a VisionTransformer passed in Python",
        }[self.kind]
        return what + (f" at {self.img_size} px" if self.img_size else "")

    @property
    def warning(self) -> str | None:
        if self.kind == PRESET:
            return (
                f"{self.value} is a preset without weights: seeded random weights; pass a "
                "checkpoint path for a trained model"
            )
        return None

    @property
    def is_default(self) -> bool:
        """The bundled default model, named or by its path (it has a labeled held-out set)."""
        if self.kind == DEFAULT:
            return True
        if self.kind != CHECKPOINT:
            return False
        from vit_deploy.assets import DEFAULT_MODEL_DIR

        return Path(str(self.value)).resolve() == DEFAULT_MODEL_DIR.resolve()

    @property
    def reproducible(self) -> bool:
        """Whether ``cli_args()`` rebuilds these weights (not so for a Python object)."""
        return self.kind in (DEFAULT, PRESET, CHECKPOINT)

    # ------------------------------------------------------------------ loading

    def load(self, attention: str = "math"):
        """A fresh ``VisionTransformer`` in eval mode, with ``model.spec = self``."""
        if self.kind == ARTIFACT:
            raise ModelSpecError(
                f"expected a checkpoint, preset or the default model, got the exported artifact "
                f"{self.value!r}; run artifacts with vit_deploy.runtime.load_backend "
                "(or pass the checkpoint it was exported from)",
                option="model",
            )
        if self.kind == OBJECT:
            raise ModelSpecError("a spec of a Python object cannot be loaded again", option="model")
        options = {k: v for k, v in (("config", self.config), ("num_heads", self.num_heads)) if v}
        if self.kind == DEFAULT:
            from vit_deploy.assets import load_default_model

            model = load_default_model(attention=attention)
            if self.img_size is not None and self.img_size != model.config.img_size:
                _check_multiple(self.img_size, model.config.patch_size)
                model = load_default_model(attention=attention, img_size=self.img_size)
        elif self.kind == PRESET:
            from vit_deploy.config import get_preset
            from vit_deploy.model import create_model

            if self.img_size is not None:
                _check_multiple(self.img_size, get_preset(str(self.value)).patch_size)
            overrides = {"img_size": self.img_size} if self.img_size else {}
            model = create_model(str(self.value), attention=attention, **overrides)
        else:
            from vit_deploy.checkpoints.load import load_model

            model = load_model(self.value, attention=attention, **options)
            if self.img_size is not None and self.img_size != model.config.img_size:
                _check_multiple(self.img_size, model.config.patch_size)
                model = load_model(
                    self.value, attention=attention, img_size=self.img_size, **options
                )
        model.spec = self
        return model

    # ------------------------------------------------------------------ records

    def cli_args(self) -> list[str]:
        """The flags that name this model to every vit-* tool."""
        if not self.reproducible:
            raise ModelSpecError(
                f"expected a model named by a preset, a checkpoint or the default, got "
                f"{self.description}: no command line rebuilds it; save it with "
                "vit_deploy.save_model and pass the directory",
                option="model",
            )
        args = [] if self.kind == DEFAULT else ["--model", str(self.value)]
        if self.img_size:
            args += ["--img-size", str(self.img_size)]
        if self.config:
            args += ["--config", self.config]
        if self.num_heads:
            args += ["--num-heads", str(self.num_heads)]
        return args

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            raise ModelSpecError(f"expected a model spec with kind in {KINDS}, got {data!r}")
        return cls(**{k: v for k, v in data.items() if k in known})


def spec_of(model) -> ModelSpec:
    """The spec a model was loaded from, or an ``object`` spec for one built in Python."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    return ModelSpec(OBJECT, img_size=model.config.img_size)


def as_model(model, attention: str = "math"):
    """A ``VisionTransformer`` from one, from a spec, or from what ``ModelSpec.parse`` takes."""
    from vit_deploy.model import VisionTransformer

    if isinstance(model, VisionTransformer):
        return model
    if isinstance(model, ModelSpec):
        return model.load(attention)
    if model is None or isinstance(model, (str, os.PathLike)):
        return ModelSpec.parse(model).load(attention)
    raise ModelSpecError(
        f"expected a VisionTransformer, a ModelSpec, a checkpoint path or a preset name, "
        f"got {type(model).__name__}",
        option="model",
    )


def weights_sha256(model) -> str:
    """sha256 over the config and every tensor (name, dtype, shape, bytes): what identifies
    the weights, whichever file or command they came from."""
    import torch

    digest = hashlib.sha256(
        json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode()
    )
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _check_positive(option: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ModelSpecError(f"expected a positive int, got {value!r}", option=option)


def _check_multiple(img_size: int, patch_size: int) -> None:
    if img_size % patch_size:
        raise ModelSpecError(
            f"expected a positive multiple of the patch size {patch_size}, got {img_size}",
            option="img_size",
        )


def _not_found_message(text: str, presets: list[str]) -> str:
    head = f"expected a preset name or a local checkpoint path, got {text!r}"
    if _HUB_NAME.match(text):
        return (
            f"{head}, which looks like a model hub name: nothing is downloaded here. Download "
            f"it once (e.g. huggingface-cli download {text.split(':')[-1]} --local-dir ckpt/) "
            "and pass the local folder"
        )
    close = difflib.get_close_matches(text, presets, n=1)
    hint = f"; did you mean the preset {close[0]!r} (random weights)?" if close else ""
    return f"{head} (no such preset, file or directory; presets: {', '.join(presets)}){hint}"


__all__ = ["ModelSpec", "ModelSpecError", "as_model", "spec_of", "weights_sha256"]
