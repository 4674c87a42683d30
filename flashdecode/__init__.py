"""flashdecode: a fast, memory-bounded streaming Transformer decoder (FlashDecoder) for video latents.

    import flashdecode
    decoder = flashdecode.load_decoder("s", "wan2.2", weights="random")
    for pixels in decoder.stream(latent_frames):   # [B,C,h,w] frames in, [B,3,k,H,W] chunks out
        ...
"""
from .errors import FlashdecodeError

__version__ = "0.2.0"

# The rest loads on first use (PEP 562), so `import flashdecode` and the CLI's start-up do not pay for torch
# before they need it (a Ctrl-C during the CLI's start-up is then one line, see console.py).
_LAZY = {"Decoder": "engine", "load_decoder": "engine", "LATENT_SPACES": "latent_spaces",
         "get_latent_space": "latent_spaces", "VARIANTS": "model", "FlashDecoder": "model", "ModelConfig": "model",
         "decode_file": "pipeline"}
__all__ = ["Decoder", "load_decoder", "FlashdecodeError", "LATENT_SPACES", "get_latent_space", "VARIANTS",
           "FlashDecoder", "ModelConfig", "decode_file", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flashdecode' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
