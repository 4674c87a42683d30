"""FlashDecoder as a diffusers VAE: a drop-in for `AutoencoderKLWan` in `WanPipeline` (decoding only).

    from diffusers import WanPipeline
    from flashdecode.integrations.diffusers import FlashDecoderVAE

    pipe = WanPipeline.from_pretrained("/models/Wan2.1-T2V-1.3B-Diffusers", vae=FlashDecoderVAE.from_checkpoint(
        "runs/wan21-s/decoder.safetensors"))
    pipe.to("cuda")
    video = pipe(prompt, num_frames=81, output_type="np").frames[0]

At the end of a run the pipeline un-normalizes the latents with the VAE's config (`latents_mean`,
`latents_std`, `z_dim`) and calls `vae.decode(z, return_dict=False)[0]`; it reads `scale_factor_temporal` and
`scale_factor_spatial` in its constructor. This class carries exactly those values for its latent space, and
decodes one latent frame at a time through the streaming engine, so the working memory is the KV window,
not the clip: only the output video itself grows with length.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin

from ..engine import Decoder, build_model, load_decoder
from ..memory import check_memory
from ..latent_spaces import get_latent_space, pixel_frames
from ..math import pick_backend
from ..model import ModelConfig


class FlashDecoderVAE(ModelMixin, ConfigMixin):
    """A `Decoder` wrapped as a diffusers model: `FlashDecoderVAE(decoder)` or `.from_checkpoint(path)`.

    The FlashDecoder network is a registered submodule (`flashdecoder`), so `pipe.to("cuda")`,
    `vae.to(torch.bfloat16)`, `vae.dtype`, `save_pretrained`/`from_pretrained` work as for any diffusers model.
    """

    ignore_for_config = ["decoder"]  # the network lives in the weights, its shape in `model_config`
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        decoder: Decoder | None = None,
        latent_space: str = "wan2.1",
        model_config: dict | None = None,
        z_dim: int | None = None,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        scale_factor_temporal: int = 4,
        scale_factor_spatial: int | None = None,
    ):
        super().__init__()
        if decoder is None:  # from_config / from_pretrained: build the network, the weights are loaded after
            config = ModelConfig(**{**model_config, "rope_axes": tuple(model_config["rope_axes"])}) \
                if model_config else ModelConfig.build("s", latent_space)
            # build_model refuses a bad config.json (0 heads, say) in one line, before any layer is built
            decoder = Decoder(build_model(config), get_latent_space(latent_space))
        space = decoder.latent_space
        # What WanPipeline reads: always the decoder's own latent space, whatever was passed.
        self.register_to_config(
            latent_space=space.name, model_config=asdict(decoder.config), z_dim=space.channels,
            latents_mean=list(space.mean), latents_std=list(space.std), scale_factor_temporal=4,
            scale_factor_spatial=space.spatial)
        self.flashdecoder = decoder.model
        self._decoder = decoder

    @classmethod
    def from_checkpoint(cls, path, model: str | None = None, latent_space: str | None = None, device=None,
                        dtype=None, **load_kw) -> "FlashDecoderVAE":
        """A FlashDecoder checkpoint (.safetensors from `flashdecode train`) as a diffusers VAE.

        On the CPU until moved (`pipe.to("cuda")`), unless `device` says otherwise; `load_kw` (backend,
        compile) go to `flashdecode.load_decoder`.
        """
        return cls(load_decoder(model, latent_space, weights=str(path), device=device or "cpu", dtype=dtype,
                                **load_kw))

    @property
    def decoder(self) -> Decoder:
        """The streaming `Decoder`, kept on the device and dtype this module was moved to."""
        d, p = self._decoder, next(self.flashdecoder.parameters())
        if (d.device, d.dtype) != (p.device, p.dtype):  # after .to(...): its KV buffers are on the old device
            d.device, d.dtype = p.device, p.dtype
            d.model.caches = None
            d.model.backend = pick_backend("auto", p.device, p.dtype)
        return d

    # AutoencoderKLWan's memory switches, so code written for it runs unchanged: decoding here is already one
    # latent frame at a time with a fixed window, so there is nothing to tile or slice.
    def enable_tiling(self, *args, **kwargs) -> None:
        pass

    def disable_tiling(self) -> None:
        pass

    def enable_slicing(self) -> None:
        pass

    def disable_slicing(self) -> None:
        pass

    def encode(self, *args, **kwargs):
        raise NotImplementedError(
            "FlashDecoderVAE only decodes; encode with the latent space's own VAE (diffusers' AutoencoderKLWan), "
            "e.g. `flashdecode encode --teacher wan2.1 --vae PATH`")

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw (un-normalized) VAE latents [B, z_dim, T, h, w] -> DecoderOutput(sample=[B, 3, 1+4(T-1), H, W]).

        The sample is in [-1, 1], in the latents' dtype (as AutoencoderKLWan returns it), on the decoder's
        device. Latent frames go through the streaming engine one at a time, each pixel chunk copied into the
        preallocated output as soon as it is ready.
        """
        if not isinstance(z, torch.Tensor):  # what AutoencoderKLWan.decode takes; an array would fail deep in torch
            raise TypeError(f"z must be a torch.Tensor of latents [B, z_dim, T, h, w], not {type(z).__name__}")
        decoder = self.decoder
        decoder.check(z)
        B, _, T, h, w = z.shape
        H, W = decoder.pixel_size(h, w)
        check_memory(decoder, B, h, w, output_bytes=B * 3 * pixel_frames(T) * H * W * z.element_size())
        video = torch.empty(B, 3, pixel_frames(T), H, W, dtype=z.dtype, device=decoder.device)
        done = 0
        for chunk in decoder.stream([z], raw=True):  # the clip as one chunk: checked once, not a sync per frame
            video[:, :, done:done + chunk.shape[2]] = chunk
            done += chunk.shape[2]
        return DecoderOutput(sample=video) if return_dict else (video,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(sample, return_dict=return_dict)


__all__ = ["FlashDecoderVAE"]
