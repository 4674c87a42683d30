"""FlashDecoderVAE in a real diffusers WanPipeline (tiny random components, offline, 2 steps)."""
import numpy as np
import pytest
import torch

pytest.importorskip("transformers")  # diffusers exposes WanPipeline only with transformers installed
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline,  # noqa: E402
                       WanTransformer3DModel)

import flashdecode  # noqa: E402
from flashdecode.integrations.diffusers import FlashDecoderVAE  # noqa: E402


@pytest.fixture(scope="module")
def decoder():
    return flashdecode.load_decoder("tiny", "wan2.1", weights="random", device="cpu")


def tiny_pipeline(vae):
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32)
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))


def test_wan_pipeline_decodes_through_the_streaming_engine(decoder):
    vae = FlashDecoderVAE(decoder)
    pipe = tiny_pipeline(vae)
    seen = []  # what the pipeline hands the VAE, and what the VAE gives back
    decode = vae.decode

    def spy(z, return_dict=True):
        out = decode(z, return_dict=return_dict)
        seen.append((z.clone(), (out.sample if return_dict else out[0]).clone()))
        return out

    vae.decode = spy
    frames = pipe(prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)),
                  guidance_scale=1.0, height=64, width=96, num_frames=9, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).frames

    assert frames.shape == (1, 9, 64, 96, 3)  # 3 latent frames -> 1 + 4*2 pixel frames, /8 in space
    (z, sample), = seen
    assert z.shape == (1, 16, 3, 8, 12)
    assert torch.equal(sample, decoder.decode(z, raw=True))  # raw latents, normalized by the decoder
    assert sample.std() > 0.01  # a real video, not a constant
    np.testing.assert_allclose(frames[0], ((sample[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).numpy(), atol=1e-6)


def test_pipeline_saves_and_loads_with_it(decoder, tmp_path):
    pipe = tiny_pipeline(FlashDecoderVAE(decoder))
    pipe.save_pretrained(tmp_path)  # model_index.json names flashdecode.integrations.diffusers.FlashDecoderVAE
    loaded = WanPipeline.from_pretrained(tmp_path, transformer=pipe.transformer, transformer_2=None, tokenizer=None,
                                         text_encoder=None)
    z = torch.randn(1, 16, 2, 4, 4)
    assert isinstance(loaded.vae, FlashDecoderVAE)
    assert torch.equal(loaded.vae.decode(z).sample, decoder.decode(z, raw=True))


def test_config_is_what_wan_pipelines_read(decoder):
    cfg, wan = FlashDecoderVAE(decoder).config, AutoencoderKLWan().config  # diffusers' defaults are Wan2.1's VAE
    assert (cfg.z_dim, cfg.scale_factor_temporal, cfg.scale_factor_spatial) == (16, 4, 8)
    assert cfg.latents_mean == list(wan.latents_mean) and cfg.latents_std == list(wan.latents_std)
    wan22 = FlashDecoderVAE(flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cpu")).config
    assert (wan22.z_dim, wan22.scale_factor_spatial, len(wan22.latents_std)) == (48, 16, 48)


def test_to_dtype_save_and_load(decoder, tmp_path):
    vae = FlashDecoderVAE(flashdecode.load_decoder("tiny", "wan2.1", weights="random", device="cpu"))
    z = torch.randn(1, 16, 2, 4, 4) * 2
    expected = vae.decode(z).sample
    vae.save_pretrained(tmp_path)
    loaded = FlashDecoderVAE.from_pretrained(tmp_path)
    assert loaded.config.model_config["name"] == "tiny"
    assert torch.equal(loaded.decode(z).sample, expected)

    vae.to(torch.bfloat16)  # what pipe.to(dtype) does: the streaming decoder follows the module
    assert vae.dtype == torch.bfloat16 and vae.decoder.dtype == torch.bfloat16
    out = vae.decode(z.bfloat16()).sample
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert (out.float() - expected).abs().max() < 0.1


def test_from_checkpoint_and_encode_refuses(decoder, tmp_path):
    from flashdecode.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "d.safetensors", decoder.model, "wan2.1")
    vae = FlashDecoderVAE.from_checkpoint(path)
    z = torch.randn(1, 16, 2, 4, 4)
    assert torch.equal(vae.decode(z, return_dict=False)[0], decoder.decode(z, raw=True))
    vae.enable_tiling()  # AutoencoderKLWan's memory switches are accepted (memory is bounded anyway)
    vae.enable_slicing()
    assert torch.equal(vae.decode(z).sample, decoder.decode(z, raw=True))
    with pytest.raises(NotImplementedError, match="only decodes"):
        vae.encode(torch.zeros(1, 3, 5, 32, 32))
