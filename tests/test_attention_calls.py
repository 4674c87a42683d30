"""What reaches attention while streaming: never a mask (a masked call can fall to a kernel that materializes
the scores), only the filled prefix of the KV ring while a video's window fills, and still the masked reference's
output whatever the video's absolute start index."""
import dataclasses

import pytest
import torch

import flashdecode
import flashdecode.math
from flashdecode.engine import Decoder, build_model
from flashdecode.latent_spaces import get_latent_space
from flashdecode.model import VARIANTS, ModelConfig


def cheap_decoder(variant: str) -> Decoder:
    """The variant's attention shapes (heads, kv heads, head dim, window); s and up at depth 1 and width 64, so
    that a test builds XL's attention in milliseconds instead of 769 M weights."""
    config = ModelConfig.build(variant, "wan2.2")
    if variant not in ("tiny", "xs"):
        config = dataclasses.replace(config, depth=1, dim=64)
    return Decoder(build_model(config, "cpu"), get_latent_space("wan2.2"))


@pytest.fixture
def attention_calls(monkeypatch):
    """Every call to SDPA (and flash-attn's function, where installed): (kwargs, key length)."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy_sdpa(q, k, v, *args, **kwargs):
        calls.append(("sdpa", args, kwargs, k.shape[-2]))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy_sdpa)
    if flashdecode.math.flash_attn_func is not None:  # pragma: no cover - needs flash-attn
        flash = flashdecode.math.flash_attn_func

        def spy_flash(q, k, v, *args, **kwargs):
            calls.append(("flash", args, kwargs, k.shape[1]))
            return flash(q, k, v, *args, **kwargs)

        monkeypatch.setattr(flashdecode.math, "flash_attn_func", spy_flash)
    return calls


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_mask_reaches_attention_while_decoding(variant, attention_calls):
    decoder = cheap_decoder(variant)
    gh, gw = 2, 3
    z = torch.randn(1, 48, 6, gh, gw, generator=torch.Generator().manual_seed(0))
    decoder.decode(z)
    backbone = attention_calls  # the refinement's 4-frame attention is a batched product (short_attention)
    assert backbone, "the decode never reached attention"
    for _, args, kwargs, _ in attention_calls:
        assert kwargs.get("attn_mask") is None and not args, (args, kwargs)
        assert not kwargs.get("is_causal", False)
    # the window fills: the first frames see the frames so far (a prefix of the ring), then W+1 frames
    N, W, depth = gh * gw, decoder.config.window, decoder.config.depth
    lengths = [c[3] for c in backbone]
    expected = [min(t, W) * N + N for t in range(6) for _ in range(depth)]
    assert lengths == expected, lengths


@pytest.mark.parametrize("start_index", [0, 1, 2, 3, 5, 10**6 + 1])
def test_streaming_equals_masked_reference_at_any_start_index(start_index):
    decoder = cheap_decoder("tiny")
    z = torch.randn(2, 48, 6, 3, 2, generator=torch.Generator().manual_seed(start_index % 7))
    reference = decoder.decode_reference(z)
    streamed = decoder.decode(z, start_index=start_index)
    assert (streamed - reference).abs().max().item() <= 1e-4
    assert reference.std() > 1e-3
    # a second video on the same decoder (the ring reused, not cleared) is still exact
    again = decoder.decode(z.flip(2), start_index=start_index + 1)
    assert (again - decoder.decode_reference(z.flip(2))).abs().max().item() <= 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_no_mask_reaches_attention_on_cuda(backend, attention_calls):
    decoder = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cuda", dtype="bf16",
                                       backend=backend)
    z = torch.randn(1, 48, 6, 3, 5, generator=torch.Generator().manual_seed(0)).cuda()
    decoder.decode(z)
    assert len(attention_calls) == 6 * decoder.config.depth  # every backbone call, every frame
    assert all(kwargs.get("attn_mask") is None and not args for _, args, kwargs, _ in attention_calls)
