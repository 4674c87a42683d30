"""The streaming engine against the masked whole-sequence reference, positions, shapes and memory."""
import pytest
import torch

import flashdecode
from flashdecode import FlashdecodeError


@pytest.fixture(scope="module", params=["wan2.2", "wan2.1"])
def decoder(request):
    return flashdecode.load_decoder("tiny", request.param, weights="random", device="cpu")


def random_latents(decoder, batch=2, frames=7, grid=(3, 5), seed=0):
    p = decoder.config.patch
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, decoder.config.in_channels, frames, grid[0] * p, grid[1] * p, generator=g)


def test_streaming_equals_masked_reference(decoder):
    z = random_latents(decoder)  # B=2, 7 latent frames, non-square 3x5 token grid
    streamed, reference = decoder.decode(z), decoder.decode_reference(z)
    assert streamed.shape == reference.shape == (2, 3, 1 + 4 * 6, 16 * 3, 16 * 5)
    assert (streamed - reference).abs().max().item() <= 1e-4
    assert streamed.std() > 1e-3  # a decoder that outputs nothing would pass the equality trivially


def test_output_does_not_depend_on_absolute_frame_index(decoder):
    z = random_latents(decoder, frames=6, seed=1)
    a = decoder.decode(z, start_index=0)
    b = decoder.decode(z, start_index=10**6)
    assert (a - b).abs().max().item() <= 1e-5


def test_frames_reach_back_further_than_the_window(decoder):
    # Each layer looks W=2 frames back, so with depth 2 the last frame still sees frame T-5 (docs/design.md 3).
    z = random_latents(decoder, frames=6, seed=2)
    changed = z.clone()
    changed[:, :, 1] += 1.0
    a, b = decoder.decode(z), decoder.decode(changed)
    assert (a[:, :, -4:] - b[:, :, -4:]).abs().max() > 1e-6


def test_chunks_frames_and_sizes(decoder):
    z = random_latents(decoder, batch=1, frames=3)
    chunks = list(decoder.stream(z[:, :, t] for t in range(3)))  # frames [B,C,h,w]
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    whole = list(decoder.stream([z]))  # one chunk [B,C,t,h,w]
    assert torch.equal(torch.cat(chunks, 2), torch.cat(whole, 2))
    one = decoder.decode(z[:, :, :1])
    assert one.shape == (1, 3, 1, 48, 80)
    assert one.min() >= -1 and one.max() <= 1


def test_raw_latents_are_normalized_first(decoder):
    z = random_latents(decoder, batch=1, frames=2)
    raw = decoder.latent_space.denormalize(z)
    assert (decoder.decode(raw, raw=True) - decoder.decode(z)).abs().max() < 1e-5


def test_wrong_channels_and_rank_are_clear_errors(decoder):
    with pytest.raises(FlashdecodeError, match="channels"):
        decoder.decode(torch.randn(1, 7, 2, 4, 4))
    with pytest.raises(FlashdecodeError, match=r"\[B,C,h,w\]"):
        decoder.decode(torch.randn(7, 4, 4))


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHDECODE_WEIGHTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FlashdecodeError, match="flashdecode train"):
        flashdecode.load_decoder("l", "wan2.1")


PEAK_RSS = """
import resource, sys, torch, flashdecode
torch.manual_seed(0)
torch.set_num_threads(1)
d = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cpu")
frames = (torch.randn(1, 48, 24, 24) for _ in range(int(sys.argv[1])))
for px in d.stream(frames):
    del px  # consume and drop, as the writer does
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_does_not_grow_with_length(peak_rss_kb):
    # docs/design.md 7: depth 2, width 128, 24x24 grid; a kept output or a torch.cat cache shows 1.17-1.36.
    short, long = peak_rss_kb(PEAK_RSS, 8), peak_rss_kb(PEAK_RSS, 64)
    assert long / short <= 1.05, (short, long)


def test_native_output_is_the_unclamped_model_output(decoder):
    z = random_latents(decoder, batch=1, frames=3, seed=3)
    native = [px.clone() for px in decoder.stream([z], native=True)]  # valid until the next chunk: keep copies
    assert [px.dtype for px in native] == [decoder.dtype] * 3 and [px.shape[2] for px in native] == [1, 4, 4]
    assert torch.equal(torch.cat(native, 2).float().clamp(-1, 1), decoder.decode(z))


@pytest.mark.parametrize("latents, message", [
    (torch.zeros(1, 48, 0, 3, 5), "empty axis"),  # T = 0
    (torch.zeros(1, 48, 2, 0, 5), "empty axis"),  # h = 0
    (torch.zeros(0, 48, 2, 3, 5), "empty axis"),  # B = 0
    (torch.zeros(1, 48, 2, 3, 5, dtype=torch.complex64), "complex64.*refused"),
    (torch.zeros(1, 48, 2, 3, 5, dtype=torch.bool), "bool.*refused"),
    (torch.zeros(1, 48, 2, 3, 5, dtype=torch.int64), "int64.*refused"),
    (torch.full((1, 48, 2, 3, 5), float("nan")), "NaN or Inf"),
    (torch.tensor(float("inf")).expand(1, 48, 2, 3, 5), "NaN or Inf"),
    (torch.zeros(1, 48, 2, 3, 5, device="meta"), "meta device"),
])
def test_bad_latents_are_one_clear_sentence(latents, message):
    d = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cpu")
    for call in (d.decode, d.decode_reference, lambda z: list(d.stream([z]))):
        with pytest.raises(FlashdecodeError, match=message):
            call(latents)


def test_latents_on_the_cpu_or_in_half_precision_are_taken():
    d = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cpu")
    z = torch.randn(1, 48, 2, 3, 5)
    assert torch.allclose(d.decode(z.half()), d.decode(z.half().float()))


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "gpu"}, "unknown device 'gpu'"),
    ({"device": "meta"}, "holds no data"),
    ({"dtype": "int8"}, "unknown dtype 'int8'"),
    ({"dtype": torch.int32}, "unknown dtype"),
    ({"backend": "cudnn"}, "unknown attention backend 'cudnn'"),
    ({"compile": "yes"}, "compile must be True, False or None"),
])
def test_bad_load_options_are_one_clear_sentence(kwargs, message):
    with pytest.raises(FlashdecodeError, match=message):
        flashdecode.load_decoder("tiny", "wan2.2", weights="random", **({"device": "cpu"} | kwargs))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_clear_sentence():
    for device in ("cuda", "cuda:1"):
        with pytest.raises(FlashdecodeError, match="sees no CUDA GPU; use --device cpu"):
            flashdecode.load_decoder("tiny", "wan2.2", weights="random", device=device)


def test_compiled_step_equals_eager_with_at_most_two_compilations():
    # One graph, the steady state's: none per frame index (a video's first W frames run eager).
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    eager = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cpu", compile=False)
    compiled = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cpu", compile=True)
    assert compiled.model.compiled_frame is not None and eager.model.compiled_frame is None
    z = torch.randn(1, 48, 12, 3, 5, generator=torch.Generator().manual_seed(4))
    out = compiled.decode(z)
    again = compiled.decode(z * 0.5, start_index=7)  # a second video of the same shape reuses the graphs
    assert (out - eager.decode(z)).abs().max() <= 1e-4
    assert (again - eager.decode(z * 0.5)).abs().max() <= 1e-4
    assert counters["stats"]["unique_graphs"] <= 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert out.std() > 1e-3
