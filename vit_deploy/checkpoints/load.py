"""Checkpoint import and our own format.

Our format is a directory with ``config.json`` (a ``ViTConfig`` dict) and
``model.safetensors`` (timm-named tensors). ``load_model`` also reads timm
state dicts, Hugging Face ViT folders and the original Google ``.npz`` release
(renamed in ``vit_deploy.checkpoints.convert``). Everything is read from local files;
nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vit_deploy.checkpoints import convert, hf, open_clip
from vit_deploy.checkpoints.features import describe, refuse_unsupported
from vit_deploy.config import ViTConfig, get_preset
from vit_deploy.errors import (
    AmbiguousCheckpointError,
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
)
from vit_deploy.model.layers import ATTENTION_IMPLS
from vit_deploy.model.vit import VisionTransformer
from vit_deploy.storage import atomic_write_json, staged_dir

NATIVE_CONFIG = "config.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_FORMAT = "vit_deploy.checkpoint/1"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Weight files a Hugging Face or timm hub folder may hold, in order of preference.
DIR_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def check_state_dict(model: torch.nn.Module, state: dict, source: str) -> None:
    """Raise one error listing every missing, unexpected and wrongly shaped tensor."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        (k, tuple(expected[k].shape), tuple(state[k].shape))
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or wrong:
        refuse_unsupported(unexpected, source)
        involved = describe(missing + unexpected + [name for name, _, _ in wrong])
        raise CheckpointMismatchError(missing, unexpected, wrong, source=source, features=involved)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """Resize a (1, prefix + H*W, D) position table to a new patch grid.

    The patch positions are interpolated as an image (align_corners=False), as the
    checkpoint's source library does it: timm and open_clip antialias, Hugging Face's
    ``interpolate_pos_encoding`` does not. Prefix positions are kept. The old grid must
    be square.
    """
    new_h, new_w = (new_grid, new_grid) if isinstance(new_grid, int) else new_grid
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = math.isqrt(grid.shape[1])
    if old * old != grid.shape[1]:
        raise CheckpointError(
            f"pos_embed: expected {num_prefix_tokens} prefix position(s) and a square grid, "
            f"got {pos_embed.shape[1]} positions"
        )
    if (old, old) == (new_h, new_w):
        return pos_embed
    dim = grid.shape[2]
    image = grid.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)  # interpolate wants fp32
    image = F.interpolate(
        image, size=(new_h, new_w), mode=interpolation, align_corners=False, antialias=antialias
    )
    grid = image.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def save_model(model: VisionTransformer, directory: str | os.PathLike) -> Path:
    """Write our format atomically: a temp directory renamed into place.

    An existing directory is replaced only if it is one of our checkpoints (or
    empty), so a wrong path cannot delete unrelated files.
    """
    directory = Path(directory)
    if directory.exists() and not _replaceable(directory):
        raise CheckpointError(
            f"{directory}: expected a new path or an existing vit_deploy checkpoint to replace, "
            "got something else; refusing to overwrite it"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    # a locked staging dir beside it, renamed into place (the old one kept until then)
    with staged_dir(directory) as stage:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(stage.path / NATIVE_WEIGHTS), metadata={"format": NATIVE_FORMAT})
        config = {"format": NATIVE_FORMAT, **model.config.to_dict()}
        atomic_write_json(stage.path / NATIVE_CONFIG, config)
    return directory


def _replaceable(directory: Path) -> bool:
    if not directory.is_dir():
        return False
    names = {p.name for p in directory.iterdir()}
    return not names or (names <= {NATIVE_CONFIG, NATIVE_WEIGHTS} and NATIVE_CONFIG in names)


def load_model(
    source: str | os.PathLike,
    attention: str = "math",
    img_size: int | None = None,
    num_classes: int | None = None,
    config: ViTConfig | str | None = None,
    check_finite: bool = False,
    num_heads: int | None = None,
) -> VisionTransformer:
    """A model in eval mode from a local checkpoint, whatever its layout.

    ``source``: our checkpoint directory; a timm state dict (.pth/.pt/.bin/.safetensors)
    or hub folder; a Hugging Face folder (ViT, DeiT, CLIP / SigLIP vision, DINOv2); an
    open_clip checkpoint (its visual tower) or folder; or a Google ViT .npz. Nothing is
    downloaded.
    ``img_size``: run at another resolution (positions resampled as the source library does).
    ``num_classes``: 0 drops the head; another count than the checkpoint's gets a new,
    randomly initialised head (for fine-tuning).
    ``config``: a known architecture's name (``vit_deploy.config.PRESETS``) deciding what
    tensor shapes do not show (heads, activation, eps, norms), or a whole ViTConfig;
    ``num_heads``: the head count alone. Both are still checked against every tensor.
    What neither the checkpoint nor these decide is refused, except for a bare timm state
    dict of a plain ViT, which loads with timm's convention and a warning; the model's
    ``checkpoint_info`` (and every manifest) records what was assumed.
    """
    if attention not in ATTENTION_IMPLS:  # before reading what may be gigabytes
        raise ConfigError(f"attention: expected one of {ATTENTION_IMPLS}, got {attention!r}")
    if config is not None and not isinstance(config, (ViTConfig, str)):
        raise ConfigError(
            f"config: expected a ViTConfig or a preset name, got {type(config).__name__}"
        )
    if isinstance(config, str):
        get_preset(config)  # an unknown name fails here, listing the known ones
    path = Path(source)
    if not path.exists():
        raise _not_found(str(source))
    ckpt = _read_dir(path) if path.is_dir() else _read_file(path)
    if isinstance(config, ViTConfig):
        cfg, assumed = config, {}
        if num_heads:
            cfg = cfg.replace(num_heads=num_heads)
    else:
        cfg, assumed = ckpt.infer(config, num_heads)
    if assumed:
        values = ", ".join(f"{k}={v!r}" for k, v in assumed.items())
        warnings.warn(
            f"{path}: assumed {values} (timm's convention; not stored in the checkpoint). "
            "Pass config= (--config NAME) or num_heads= (--num-heads N) if that is wrong: "
            "outputs would be wrong while every shape still fits",
            stacklevel=2,
        )
    model = _build(
        cfg,
        ckpt.state,
        str(path),
        attention,
        img_size or ckpt.img_size,
        num_classes,
        check_finite,
        ckpt.antialias,
    )
    model.checkpoint_info = {
        **ckpt.info,
        "path": str(path),
        "config_from": (
            "config= (a ViTConfig)"
            if isinstance(config, ViTConfig)
            else f"config={config!r}"
            if config
            else ckpt.info.get("config_from", "the checkpoint")
        ),
        "config_name": config if isinstance(config, str) else None,
        "assumed": assumed,
    }
    return model


def load_native(
    directory: str | os.PathLike,
    attention: str = "math",
    img_size: int | None = None,
    num_classes: int | None = None,
    check_finite: bool = False,
) -> VisionTransformer:
    """A model from our own checkpoint directory (see ``load_model`` for the options)."""
    directory = Path(directory)
    if not (directory / NATIVE_CONFIG).is_file():
        raise CheckpointError(f"expected {NATIVE_CONFIG} in {directory}, found no such file")
    ckpt = _read_native(directory, _read_json(directory / NATIVE_CONFIG))
    cfg, _ = ckpt.infer(None, None)
    model = _build(cfg, ckpt.state, str(directory), attention, img_size, num_classes, check_finite)
    model.checkpoint_info = {**ckpt.info, "path": str(directory), "assumed": {}}
    return model


def _build(cfg, state, source, attention, img_size, num_classes, check_finite, antialias=False):
    """Check the tensors against the checkpoint's config, then adapt them to the request."""
    state = convert.align_state(state, cfg)
    # Built on the meta device: random init of weights about to be replaced is wasted time.
    model = _skeleton(cfg, attention, check_finite)
    check_state_dict(model, state, source=source)
    changes = {}
    if img_size is not None and img_size != cfg.img_size:
        changes["img_size"] = img_size
    if num_classes is not None and num_classes != cfg.num_classes:
        changes.update(num_classes=num_classes, labels=())
    if not changes:
        return _assign(model, state)
    old_classes = cfg.num_classes
    try:
        cfg = cfg.replace(**changes)
    except ConfigError as exc:
        raise ConfigError(f"{source}: cannot load with {changes}: {exc}") from exc
    state = dict(state)
    if "img_size" in changes:
        state["pos_embed"] = resample_pos_embed(
            state["pos_embed"],
            cfg.grid_size,
            num_prefix_tokens=cfg.num_prefix_tokens,
            antialias=antialias,
        )
    if "num_classes" in changes:
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
    model = _skeleton(cfg, attention, check_finite)
    if changes.get("num_classes"):  # a new class count: a fresh head, as timm gives
        fresh = {"head": torch.nn.Linear(cfg.embed_dim_out, num_classes)}
        if model.head_dist is not None:
            fresh["head_dist"] = torch.nn.Linear(cfg.embed_dim, num_classes)
        for name, head in fresh.items():
            torch.nn.init.trunc_normal_(head.weight, std=0.02)
            torch.nn.init.zeros_(head.bias)
            setattr(model, name, head)
            state.update({f"{name}.{k}": v for k, v in head.state_dict().items()})
        warnings.warn(
            f"{source}: the checkpoint's head has {old_classes} classes; "
            f"num_classes={num_classes} gets a new, randomly initialised head",
            stacklevel=3,  # the caller of load_model
        )
    return _assign(model, state)


def _skeleton(cfg: ViTConfig, attention: str, check_finite: bool) -> VisionTransformer:
    with torch.device("meta"):
        return VisionTransformer(cfg, attention=attention, check_finite=check_finite)


def _assign(model: VisionTransformer, state: dict) -> VisionTransformer:
    # the model is fp32 whatever the file held (fp16/bf16 hub weights are common)
    state = {k: v.to(device="cpu", dtype=torch.float32).contiguous() for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def _not_found(source: str) -> CheckpointError:
    name = source.removeprefix("hf-hub:")
    if source != name or (name.count("/") == 1 and not name.startswith((".", "/", "~"))):
        return CheckpointError(
            f"{source!r} is not a local path (a hub name?); nothing is downloaded: download the "
            f"checkpoint yourself (e.g. `hf download {name} --local-dir DIR`) and pass its "
            "local path"
        )
    return CheckpointError(
        f"{source}: no such file or directory; expected a local checkpoint (nothing is downloaded)"
    )


# ---------------------------------------------------------------- readers


@dataclass
class Checkpoint:
    """What a reader found: timm-named tensors, how to decide the config, and a record."""

    state: dict
    # (config name or None, num_heads or None) -> (config, values assumed for it); lazy,
    # so a caller's config= skips the inference and its warnings
    infer: Callable[[str | None, int | None], tuple[ViTConfig, dict]]
    info: dict
    antialias: bool = False  # how the source library resamples positions (see above)
    img_size: int | None = None  # the resolution the source runs at, if not the tensors'


def _timm_infer(state, source, **hints):
    def infer(name, num_heads):
        args = dict(hints)
        if name:
            args["architecture"] = name
            args["model_args"] = {}  # a named architecture replaces the folder's
        decided = dict(args.pop("decided", {}))
        if num_heads:
            decided["num_heads"] = num_heads
        return convert.timm_config(state, source, decided=decided, **args)

    return infer


def _fixed(cfg: ViTConfig, state, source):
    """A config the checkpoint states in full; config= replaces it, num_heads= amends it."""

    def infer(name, num_heads):
        if name:
            return _timm_infer(state, source)(name, num_heads)
        return (cfg.replace(num_heads=num_heads) if num_heads else cfg), {}

    return infer


def _read_dir(path: Path) -> Checkpoint:
    if (path / open_clip.CONFIG_NAME).is_file() and not (path / NATIVE_CONFIG).is_file():
        return _open_clip_dir(path)
    if not (path / NATIVE_CONFIG).is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(
            f"{path}: expected a checkpoint folder with {NATIVE_CONFIG} (vit_deploy, Hugging "
            f"Face or timm layout) or {open_clip.CONFIG_NAME}, found {found or 'an empty folder'}"
        )
    meta = _read_json(path / NATIVE_CONFIG)
    if "format" in meta:
        return _read_native(path, meta)
    weights = _dir_weights(path)
    source = str(weights)
    if "model_type" in meta:  # Hugging Face
        state, notes = hf.hf_to_timm(_read_tensors(weights), source)
        return _hf(path, meta, state, source, notes)
    if "architecture" in meta:  # timm hub folder
        state = _read_tensors(weights)
        hints = convert.timm_dir_hints(meta, source)
        info = {
            "weights": source,
            "library": "timm",
            "layout": "timm hub folder",
            "architecture": hints["architecture"],
        }
        info["model_args"] = hints["model_args"]
        return Checkpoint(state, _timm_infer(state, source, **hints), info, antialias=True)
    raise CheckpointError(
        f"{path / NATIVE_CONFIG}: expected a vit_deploy ('format'), Hugging Face ('model_type') "
        "or timm ('architecture') config, found none of those keys"
    )


def _dir_weights(path: Path) -> Path:
    weights = next((path / n for n in DIR_WEIGHTS if (path / n).is_file()), None)
    if weights is None:
        shards = sorted(p.name for p in path.glob("*.index.json"))
        raise CheckpointError(
            f"{path}: expected one of {DIR_WEIGHTS} beside its config, found none"
            + (f" (sharded checkpoints, {shards[0]}, are not supported)" if shards else "")
        )
    return weights


def _open_clip_dir(path: Path) -> Checkpoint:
    meta = _read_json(path / open_clip.CONFIG_NAME)
    weights = next(
        (path / n for n in open_clip.WEIGHT_NAMES if (path / n).is_file()), None
    ) or _dir_weights(path)
    source = str(weights)
    state, notes = open_clip.visual_to_timm(_read_tensors(weights), source)
    cfg = open_clip.open_clip_config(meta, state, source)
    info = {"weights": source, "library": "open_clip", "layout": "open_clip folder", "notes": notes}
    info["model_cfg"] = meta.get("model_cfg") or {}
    return Checkpoint(state, _fixed(cfg, state, source), info, antialias=True)


def _read_native(path: Path, meta: dict) -> Checkpoint:
    meta = dict(meta)
    fmt = meta.pop("format", None)
    if fmt != NATIVE_FORMAT:
        raise CheckpointError(
            f"{path / NATIVE_CONFIG}: expected format {NATIVE_FORMAT!r}, got {fmt!r}"
            + (" (written by a newer vit-deploy?)" if str(fmt).startswith("vit_deploy.") else "")
        )
    try:
        cfg = ViTConfig.from_dict(meta)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path / NATIVE_CONFIG}: expected a valid ViTConfig: {exc}") from exc
    weights = path / NATIVE_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"expected {NATIVE_WEIGHTS} in {path}, found no such file")
    state = _read_safetensors(weights)
    info = {"library": "vit_deploy", "layout": NATIVE_FORMAT}
    return Checkpoint(state, _fixed(cfg, state, str(path)), info)


def _read_file(path: Path) -> Checkpoint:
    source = str(path)
    if path.suffix.lower() == ".npz":
        state, num_heads = convert.npz_to_timm(_read_npz(path), source)
        decided = dict(convert.TIMM_CONVENTION, num_heads=num_heads, norm_eps=convert.JAX_EPS)
        info = {"weights": source, "library": "big_vision", "layout": "Google ViT .npz"}
        return Checkpoint(state, _timm_infer(state, source, decided=decided), info)
    state = _read_tensors(path)
    if hf.is_hf_layout(state):
        state, notes = hf.hf_to_timm(state, source)
        sibling = path.parent / NATIVE_CONFIG
        meta = _read_json(sibling) if sibling.is_file() else {}
        if "model_type" in meta:
            return _hf(path.parent, meta, state, source, notes)
        info = {
            "weights": source,
            "library": "transformers",
            "layout": "Hugging Face tensors without config.json",
        }
        decided = {"norm_eps": hf.DEFAULT_EPS["vit"]}
        return Checkpoint(state, _timm_infer(state, source, decided=decided), info)
    if open_clip.is_open_clip_layout(state):
        state, notes = open_clip.visual_to_timm(state, source)
        info = {
            "weights": source,
            "library": "open_clip",
            "layout": "open_clip state dict",
            "notes": notes,
        }
        return Checkpoint(state, _open_clip_bare(state, source), info, antialias=True)
    info = {"weights": source, "library": "timm", "layout": "timm state dict"}
    return Checkpoint(state, _timm_infer(state, source), info, antialias=True)


def _open_clip_bare(state, source):
    def infer(name, num_heads):
        if name:
            return _timm_infer(state, source)(name, num_heads)
        fields = convert.tensor_layout(state, source)
        raise AmbiguousCheckpointError(
            f"{source}: an open_clip state dict does not say its activation (OpenAI's "
            "quick-GELU or GELU) or heads; pass config= (--config NAME, e.g. "
            f"{' or '.join(convert.matching_presets(fields)) or 'a ViTConfig'}), or load its "
            f"folder with {open_clip.CONFIG_NAME}"
        )

    return infer


def _hf(folder: Path, meta: dict, state: dict, source: str, notes: list[str]) -> Checkpoint:
    processor_path = folder / "preprocessor_config.json"
    processor = _read_json(processor_path) if processor_path.is_file() else None
    cfg, runs_at = hf.hf_config(meta, state, source, processor)  # checked even with config=
    info = {
        "weights": source,
        "library": "transformers",
        "layout": "Hugging Face folder",
        "architecture": ",".join(meta.get("architectures") or []) or meta.get("model_type"),
        "model_type": meta.get("model_type"),
        "notes": notes,
    }
    img_size = runs_at if runs_at != cfg.img_size else None
    if img_size:
        notes.append(f"runs at {runs_at} px, as its processor feeds it (positions resampled)")
    return Checkpoint(state, _fixed(cfg, state, source), info, img_size=img_size)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return convert.unwrap_state_dict(_read_torch(path), str(path))
    raise CheckpointError(
        f"{path}: expected a checkpoint file ending in .safetensors, .npz or "
        f"{', '.join(TORCH_SUFFIXES)}, or a checkpoint folder; got {path.suffix or 'no suffix'}"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors has its own error types for corrupt files
        raise CheckpointError(
            f"{path}: expected a safetensors file, could not read it (truncated or corrupt?): {exc}"
        ) from exc


def _read_torch(path: Path) -> object:
    try:
        # weights_only: a checkpoint is data; never run code from a pickle
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise CheckpointError(_corrupt(path, exc)) from exc
        raise CheckpointError(
            f"{path}: holds Python objects besides tensors ({found.group(1)}), which are not "
            "loaded because unpickling them could run code. Re-save only the weights: "
            "torch.save(checkpoint['state_dict'], 'weights.pth')"
        ) from exc
    except Exception as exc:  # truncated/garbage files raise anything from EOFError to IndexError
        raise CheckpointError(_corrupt(path, exc)) from exc


def _corrupt(path: Path, exc: Exception) -> str:
    first_line = (str(exc).splitlines() or [""])[0][:200]
    return (
        f"{path}: expected a PyTorch checkpoint (torch.save of a state dict), could not read "
        f"it (truncated or corrupt?): {type(exc).__name__}: {first_line}"
    )


def _read_npz(path: Path) -> Mapping[str, np.ndarray]:
    try:
        npz = np.load(path, allow_pickle=False)  # no pickles: they could run code
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"a single {type(npz).__name__}, not an archive of named arrays")
        with npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # truncated zips raise BadZipFile, EOFError, zlib.error, ...
        raise CheckpointError(
            f"{path}: expected a NumPy .npz of ViT weights, could not read it (truncated or "
            f"corrupt?): {type(exc).__name__}: {exc}"
        ) from exc


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: expected JSON, could not parse it ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
