import pytest
import torch
import torch.nn.functional as F

from flashdecode.model import FlashDecoder, ModelConfig, count_parameters, flops_per_clip

PAPER = {"s": 56.8e6, "b": 161.7e6, "l": 348.0e6, "xl": 769.3e6}


@pytest.mark.parametrize("variant", PAPER)
def test_parameter_counts_match_the_paper(variant):
    n = count_parameters(ModelConfig.build(variant, "wan2.2"))
    assert abs(n - PAPER[variant]) / PAPER[variant] < 1e-3


def test_flops_match_the_cost_model():
    # docs/design.md section 7: XL ~80.6 TFLOP per 25-frame 720p clip (45x80 tokens), S ~10.1, XL 1080p ~265.
    assert flops_per_clip(ModelConfig.build("xl"), 45, 80, 7) / 1e12 == pytest.approx(80.6, rel=2e-3)
    assert flops_per_clip(ModelConfig.build("s"), 45, 80, 7) / 1e12 == pytest.approx(10.1, rel=3e-3)
    assert flops_per_clip(ModelConfig.build("xl"), 68, 120, 7) / 1e12 == pytest.approx(265, rel=2e-3)


def test_config_json_round_trip():
    c = ModelConfig.build("b", "wan2.1")
    assert ModelConfig.from_json(c.to_json()) == c
    assert (c.in_channels, c.patch) == (16, 2)


def test_real_rope_rotates_consecutive_pairs_like_complex_multiplication():
    # The checkpoints' convention: (x[2i], x[2i+1]) is one complex number times e^{i angle}.
    from flashdecode.math import apply_rope, rope_angles, rope_table
    x = torch.randn(2, 3, 5, 64)
    angles = rope_angles(torch.arange(5) * 7, 64)
    complex_rotated = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * torch.polar(
        torch.ones_like(angles), angles)).flatten(-2)
    assert (apply_rope(x, rope_table(angles)) - complex_rotated).abs().max() < 1e-5
    assert (apply_rope(x, rope_table(angles)) - x).abs().max() > 0.1  # it does rotate


def test_fused_projections_keep_the_checkpoint_names():
    torch.manual_seed(0)
    model = FlashDecoder(ModelConfig.build("tiny"))
    state = model.state_dict()
    assert {"blocks.0.attn.wq.weight", "blocks.0.attn.wk.weight", "blocks.0.attn.wv.weight",
            "blocks.0.mlp.w1.weight", "blocks.0.mlp.w3.weight", "refine.1.mlp.w3.weight"} <= set(state)
    assert not any("wqkv" in k or "w13" in k for k in state)
    # the fused GEMM computes what the three (two) separate projections of the file's weights compute
    attn, mlp, x = model.blocks[0].attn, model.blocks[0].mlp, torch.randn(3, 128)
    q = x @ state["blocks.0.attn.wq.weight"].T
    assert torch.allclose(attn.wqkv(x)[:, : q.shape[1]], q, atol=1e-6)
    w1, w2, w3 = (state[f"blocks.0.mlp.w{i}.weight"] for i in (1, 2, 3))
    assert torch.allclose(mlp(x), (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T, atol=1e-6)
    other = FlashDecoder(ModelConfig.build("tiny"))
    other.load_state_dict(state)  # unfused names in, fused modules filled
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


def test_render_in_token_chunks_is_exact():
    torch.manual_seed(0)
    model = FlashDecoder(ModelConfig.build("tiny")).eval()
    x, rope = torch.randn(2, 15, 128), model.sub_frame_rope("cpu")
    whole = model.render(x, 3, 5, rope)
    model.render_chunk = 4  # 30 tokens -> 8 chunks, the last one short
    assert (model.render(x, 3, 5, rope) - whole).abs().max() < 1e-6


@pytest.mark.parametrize("heads, kv_heads", [(2, 1), (24, 3), (8, 8)])
def test_short_attention_is_sdpa_as_one_batched_product(heads, kv_heads):
    from flashdecode.math import short_attention
    g = torch.Generator().manual_seed(heads)
    q = torch.randn(30, 4, heads, 64, generator=g).transpose(1, 2)  # [n, H, 4, D] strided, as the blocks make it
    k, v = (torch.randn(30, 4, kv_heads, 64, generator=g).transpose(1, 2) for _ in range(2))
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert (short_attention(q, k, v) - expected).abs().max() < 1e-5
