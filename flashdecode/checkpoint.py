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

from .errors import FlashdecodeError, listed, shown
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


def check_weights_path(path) -> Path:
    """A --weights PATH that names one .safetensors file, or one line saying what it is instead."""
    path = Path(path)
    from .outputs import check_names

    check_names([("--weights", path)])  # a name too long for the filesystem: one line, not ENAMETOOLONG
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" (it holds {listed(inside, 3)})" if inside else ""
        raise FlashdecodeError(f"weights {shown(path)} is a folder{hint}; pass --weights PATH to a .safetensors "
                               "checkpoint file, or random")
    if path.exists() and not path.is_file():
        raise FlashdecodeError(f"weights {shown(path)} is not a regular file; pass --weights PATH to a .safetensors "
                               "file")
    if not path.is_file():
        raise FlashdecodeError(f"weights file {path} does not exist; pass --weights PATH to a flashdecode .safetensors checkpoint")
    if path.suffix != ".safetensors":
        raise FlashdecodeError(f"weights {path} must be a .safetensors file (other formats are never unpickled)")
    return path


def _open(path):
    path = check_weights_path(path)
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise FlashdecodeError(f"weights {path} is not a readable safetensors file ({e}); re-download or re-train it") from None


def read_metadata(path) -> dict:
    """The checkpoint's metadata, with `config` and `provenance` parsed from JSON (header only: no tensor read)."""
    with _open(path) as f:
        return _parse_metadata(f.metadata(), path)


def _parse_metadata(meta: dict | None, path) -> dict:
    """A safetensors header's metadata with `config` and `provenance` parsed from JSON."""
    meta = dict(meta or {})
    for key in ("config", "provenance"):
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except (ValueError, RecursionError) as e:
                raise FlashdecodeError(f"weights {path} have malformed {key!r} metadata (not JSON: {e}); "
                                       "re-save the checkpoint with flashdecode") from None
    return meta


def load_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    with _open(path) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    return state, _parse_metadata(meta, path)


def config_from_metadata(meta: dict, source="the checkpoint") -> ModelConfig | None:
    """The model config a checkpoint's metadata names (None if it names none), checked for sane types and
    bounds: a file's claims must not size an allocation before they are checked."""
    if "config" not in meta:
        return None
    try:
        if not isinstance(meta["config"], dict):
            raise ValueError("it is not a JSON object")
        config = ModelConfig.from_json(json.dumps(meta["config"]))
        config.check()
    except (ValueError, TypeError) as e:
        raise FlashdecodeError(f"weights {source} have an unusable model config ({e}); "
                               "re-save the checkpoint with flashdecode") from None
    return config


def expected_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """The checkpoint tensors (names and shapes) a config needs, computed on the meta device: no memory."""
    with torch.device("meta"):
        return {k: v.shape for k, v in FlashDecoder(config).state_dict().items()}


def _check_shapes(config: ModelConfig, found: dict[str, torch.Size], source) -> None:
    """One line naming the first tensor that does not match what `config` needs, and how many more."""
    expected = expected_shapes(config)
    problems = [f"{k} is {list(found[k])} in the file, {list(v)} in the model"
                for k, v in expected.items() if k in found and found[k] != v]
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if problems or missing or extra:
        detail = (problems + [f"{k} missing" for k in missing] + [f"{k} unexpected" for k in extra])
        more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
        raise FlashdecodeError(f"{source} does not fit model {config.name!r} "
                               f"({config.depth}x{config.dim}): {detail[0]}{more}; "
                               "pick the --model the checkpoint was trained as")


FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def check_fits(path, config: ModelConfig) -> None:
    """Before any tensor is read or the model built: the file's tensors (from its header) are exactly
    the floating-point names and shapes `config` needs, so its bytes pay for what the config allocates."""
    with _open(path) as f:
        slices = {k: f.get_slice(k) for k in f.keys()}
        found = {k: torch.Size(s.get_shape()) for k, s in slices.items()}
        not_float = [k for k, s in slices.items() if s.get_dtype() not in FLOAT_DTYPES]
    _check_shapes(config, found, path)
    if not_float:
        raise FlashdecodeError(f"{path} holds {not_float[0]} as {slices[not_float[0]].get_dtype()}, not floating point;"
                               " it is not a flashdecode checkpoint")


def check_finite(state: dict[str, torch.Tensor], source, remedy: str) -> None:
    """One line naming the first tensor holding NaN or Inf, then `remedy`: a NaN weight otherwise makes a
    silent all-black video (a decoder) or NaN latents (a teacher)."""
    not_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not_finite:
        more = f" (and {len(not_finite) - 1} more tensors)" if len(not_finite) > 1 else ""
        raise FlashdecodeError(f"{shown(source)} holds NaN or Inf values in {shown(not_finite[0], 80)}{more}; {remedy}")


def check_float_weights(state: dict[str, torch.Tensor], source, kind: str, remedy: str) -> None:
    """One line for the first tensor that is not floating point (the file is not a `kind`), then for NaN or Inf
    values (check_finite): what a decoder of another family checks before it loads a weight file."""
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        raise FlashdecodeError(f"{shown(source)} holds {shown(not_float[0], 80)} as {state[not_float[0]].dtype}, not "
                               f"floating point; it is not a {kind}")
    check_finite(state, source, remedy)


def load_weights(model: FlashDecoder, state: dict[str, torch.Tensor], source) -> None:
    """Copy `state` into `model`, checking every name and shape and that every value is finite; one line
    says what is wrong (a NaN/Inf weight would otherwise make a silent all-black video)."""
    _check_shapes(model.config, {k: v.shape for k, v in state.items()}, source)
    check_finite(state, source, "the checkpoint is corrupt (or its training diverged): use an earlier checkpoint or re-train")
    expected = model.state_dict()
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
