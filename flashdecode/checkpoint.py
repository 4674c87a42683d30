"""Checkpoints: safetensors tensors + JSON metadata (variant, latent space, normalization, config, provenance).

Only safetensors is read: a user's file is never unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import FlashdecodeError
from .model import FlashDecoder, ModelConfig

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def weights_dirs() -> list[Path]:
    """Where `load_decoder(weights=None)` looks: $FLASHDECODE_WEIGHTS, ./weights, the repository's weights/."""
    dirs = [Path(p) for p in os.environ.get("FLASHDECODE_WEIGHTS", "").split(os.pathsep) if p]
    return list(dict.fromkeys(dirs + [Path.cwd() / "weights", REPO_WEIGHTS]))


def save_checkpoint(path, model: FlashDecoder, latent_space: str, provenance: dict | None = None, dtype=None) -> Path:
    """Write the model's weights (optionally cast, e.g. float16 to halve the file) and its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype else v).detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": "flashdecode",
        "variant": model.config.name,
        "latent_space": latent_space,
        "normalized": "true",
        "config": model.config.to_json(),
        "provenance": json.dumps(provenance or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the real name
    return path


def _open(path):
    path = Path(path)
    if not path.is_file():
        raise FlashdecodeError(f"weights file {path} does not exist; pass --weights PATH to a flashdecode .safetensors checkpoint")
    if path.suffix != ".safetensors":
        raise FlashdecodeError(f"weights {path} must be a .safetensors file (other formats are never unpickled)")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise FlashdecodeError(f"weights {path} is not a readable safetensors file ({e}); re-download or re-train it") from None


def read_metadata(path) -> dict:
    """The checkpoint's metadata, with `config` and `provenance` parsed from JSON."""
    with _open(path) as f:
        meta = dict(f.metadata() or {})
    for key in ("config", "provenance"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


def load_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    with _open(path) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    return state, read_metadata(path)


def config_from_metadata(meta: dict) -> ModelConfig | None:
    return ModelConfig.from_json(json.dumps(meta["config"])) if isinstance(meta.get("config"), dict) else None


def load_weights(model: FlashDecoder, state: dict[str, torch.Tensor], source) -> None:
    """Copy `state` into `model`, checking every name and shape; one line says what does not match."""
    expected = model.state_dict()
    problems = [f"{k} is {list(state[k].shape)} in the file, {list(v.shape)} in the model"
                for k, v in expected.items() if k in state and state[k].shape != v.shape]
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if problems or missing or extra:
        detail = (problems + [f"{k} missing" for k in missing] + [f"{k} unexpected" for k in extra])
        more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
        raise FlashdecodeError(f"{source} does not fit model {model.config.name!r} "
                               f"({model.config.depth}x{model.config.dim}): {detail[0]}{more}; "
                               "pick the --model the checkpoint was trained as")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def find_weights(variant: str | None, latent_space: str | None) -> Path | None:
    """The first flashdecode checkpoint in the weights folders matching the variant and latent space."""
    for folder in weights_dirs():
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            try:
                meta = read_metadata(path)
            except (FlashdecodeError, ValueError):
                continue
            if meta.get("format") != "flashdecode":
                continue
            if variant not in (None, meta.get("variant")) or latent_space not in (None, meta.get("latent_space")):
                continue
            return path
    return None
