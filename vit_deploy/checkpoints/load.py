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
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vit_deploy.checkpoints import convert
from vit_deploy.config import ViTConfig, get_preset
from vit_deploy.errors import CheckpointError, CheckpointMismatchError, ConfigError
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
        raise CheckpointMismatchError(missing, unexpected, wrong, source=source)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Resize a (1, prefix + H*W, D) position table to a new patch grid.

    The patch positions are interpolated as an image (align_corners=False, no
    antialiasing); the class position is kept as it is. The old grid must be square.
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
        image, size=(new_h, new_w), mode=interpolation, align_corners=False, antialias=False
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
) -> VisionTransformer:
    """A model in eval mode from a local checkpoint, whatever its layout.

    ``source``: our checkpoint directory; a timm state dict (.pth/.pt/.bin/.safetensors);
    a Hugging Face ViT folder or a timm hub folder (config.json + weights); or a
    Google ViT .npz. Nothing is downloaded.
    ``img_size``: run at another resolution (the position embedding is resampled).
    ``num_classes``: 0 drops the head; another count than the checkpoint's gets a new,
    randomly initialised head (for fine-tuning).
    ``config``: a ViTConfig or preset name that replaces the inferred architecture
    (e.g. to give num_heads, which tensor shapes do not show); it is still checked
    against every tensor.
    """
    if attention not in ATTENTION_IMPLS:  # before reading what may be gigabytes
        raise ConfigError(f"attention: expected one of {ATTENTION_IMPLS}, got {attention!r}")
    path = Path(source)
    if not path.exists():
        raise _not_found(str(source))
    state, inferred = _read_dir(path) if path.is_dir() else _read_file(path)
    cfg = _as_config(config) if config is not None else inferred()
    return _build(cfg, state, str(path), attention, img_size, num_classes, check_finite)


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
    state, stored_config = _read_native(directory, _read_json(directory / NATIVE_CONFIG))
    return _build(
        stored_config(), state, str(directory), attention, img_size, num_classes, check_finite
    )


def _build(cfg, state, source, attention, img_size, num_classes, check_finite):
    """Check the tensors against the checkpoint's config, then adapt them to the request."""
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
            state["pos_embed"], cfg.grid_size, num_prefix_tokens=int(cfg.class_token)
        )
    if "num_classes" in changes:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model = _skeleton(cfg, attention, check_finite)
    if changes.get("num_classes"):  # a new class count: a fresh head, as timm gives
        model.head = torch.nn.Linear(cfg.embed_dim, num_classes)
        torch.nn.init.trunc_normal_(model.head.weight, std=0.02)
        torch.nn.init.zeros_(model.head.bias)
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
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


def _as_config(config: ViTConfig | str) -> ViTConfig:
    if isinstance(config, ViTConfig):
        return config
    if isinstance(config, str):
        return get_preset(config)
    raise ConfigError(f"config: expected a ViTConfig or a preset name, got {type(config).__name__}")


# ---------------------------------------------------------------- readers


# Each reader returns (timm-named tensors, a function giving the inferred config): the
# inference is skipped, with its warnings, when the caller passes config=.
Reader = tuple[dict, Callable[[], ViTConfig]]


def _read_dir(path: Path) -> Reader:
    if not (path / NATIVE_CONFIG).is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(
            f"{path}: expected a checkpoint folder with {NATIVE_CONFIG} (vit_deploy, Hugging "
            f"Face or timm layout), found {found or 'an empty folder'}"
        )
    meta = _read_json(path / NATIVE_CONFIG)
    if "format" in meta:
        return _read_native(path, meta)
    weights = next((path / n for n in DIR_WEIGHTS if (path / n).is_file()), None)
    if weights is None:
        shards = sorted(p.name for p in path.glob("*.index.json"))
        raise CheckpointError(
            f"{path}: expected one of {DIR_WEIGHTS} beside config.json, found none"
            + (f" (sharded checkpoints, {shards[0]}, are not supported)" if shards else "")
        )
    source = str(weights)
    if "model_type" in meta:  # Hugging Face
        return _hf(path, meta, convert.hf_to_timm(_read_tensors(weights), source), source)
    if "architecture" in meta:  # timm hub folder
        state = convert.add_class_position(_read_tensors(weights))
        hints = convert.timm_dir_hints(meta, source)
        return state, partial(convert.infer_config, state, source, **hints)
    raise CheckpointError(
        f"{path / NATIVE_CONFIG}: expected a vit_deploy ('format'), Hugging Face ('model_type') "
        "or timm ('architecture') config, found none of those keys"
    )


def _read_native(path: Path, meta: dict) -> Reader:
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
    return _read_safetensors(weights), lambda: cfg


def _read_file(path: Path) -> Reader:
    source = str(path)
    if path.suffix.lower() == ".npz":
        state, num_heads = convert.npz_to_timm(_read_npz(path), source)
        state = convert.add_class_position(state)
        return state, partial(convert.infer_config, state, source, num_heads, convert.JAX_EPS)
    state = _read_tensors(path)
    if convert.is_hf_layout(state):
        state = convert.hf_to_timm(state, source)
        sibling = path.parent / NATIVE_CONFIG
        meta = _read_json(sibling) if sibling.is_file() else {}
        if "model_type" in meta:
            return _hf(path.parent, meta, state, source)
        return state, partial(convert.infer_config, state, source, norm_eps=convert.HF_DEFAULT_EPS)
    state = convert.add_class_position(state)
    return state, partial(convert.infer_config, state, source)


def _hf(folder: Path, meta: dict, state: dict, source: str) -> Reader:
    processor_path = folder / "preprocessor_config.json"
    processor = _read_json(processor_path) if processor_path.is_file() else None
    cfg = convert.hf_config(meta, state, source, processor)  # checked even with config=
    return state, lambda: cfg


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
