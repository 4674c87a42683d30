"""flashdecode: a fast, memory-bounded streaming Transformer decoder (FlashDecoder) for video latents.

    import flashdecode
    decoder = flashdecode.load_decoder("s", "wan2.2", weights="random")
    for pixels in decoder.stream(latent_frames):   # [B,C,h,w] frames in, [B,3,k,H,W] chunks out
        ...
"""
from .engine import Decoder, load_decoder
from .errors import FlashdecodeError
from .latent_spaces import LATENT_SPACES, get_latent_space
from .model import VARIANTS, FlashDecoder, ModelConfig
from .pipeline import decode_file

__version__ = "0.1.0"
__all__ = ["Decoder", "load_decoder", "FlashdecodeError", "LATENT_SPACES", "get_latent_space", "VARIANTS",
           "FlashDecoder", "ModelConfig", "decode_file", "__version__"]
