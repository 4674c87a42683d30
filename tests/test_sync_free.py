"""The decode loop never waits for the GPU in the steady state: constants are built once per video, latents
reach the device pinned and non_blocking, and NaN/Inf of GPU latents are checked on the GPU.

On the CPU a host sync cannot be observed, so the CPU test checks the structure that causes them on a GPU:
no tensor built from Python data (a pageable host-to-device copy) once a video has started. The CUDA tests
check the real thing under `torch.cuda.set_sync_debug_mode("error")`."""
import pytest
import torch

import flashdecode
from flashdecode import FlashdecodeError
from flashdecode.convert import to_i420


def test_steady_state_builds_no_tensor_from_python_data(monkeypatch):
    decoder = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cpu")
    frames = [torch.randn(1, 48, 2, 4, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    built = []
    tensor = torch.tensor

    def spy(*args, **kwargs):
        built.append(args[0] if args else kwargs.get("data"))
        return tensor(*args, **kwargs)

    it = decoder.stream(iter(frames), raw=True, native=True)
    first = [to_i420(next(it)) for _ in range(2)]  # the first frames may set up per-video constants
    monkeypatch.setattr(torch, "tensor", spy)
    rest = [to_i420(px) for px in it]
    monkeypatch.undo()
    assert len(first) + len(rest) == 6
    assert built == [], built  # on a GPU each would be a copy from pageable memory: a host sync per frame
    # and the same pixels as the plain path
    z = torch.stack(frames, 2)
    assert torch.equal(torch.cat([*first, *rest], 1), to_i420(decoder.decode(decoder.latent_space.normalize(z))))


def cuda_frames(device, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 48, 4, 6, generator=g).to(device) for _ in range(n)]


@pytest.mark.cuda
@pytest.mark.parametrize("where", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_steady_state_never_syncs_on_cuda(where, dtype):
    decoder = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cuda", dtype=dtype)
    frames = cuda_frames(where)
    it = decoder.stream(iter(frames), raw=True, native=True)
    out = [to_i420(next(it)) for _ in range(2)]  # set-up: caches, tables, the first pinned blocks
    torch.cuda.set_sync_debug_mode("error")
    try:
        out += [to_i420(next(it)) for _ in range(len(frames) - 2)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert next(it, None) is None  # the end of the video: the last NaN/Inf verdicts are waited for here
    z = torch.stack([f.cuda() for f in frames], 2)
    expected = to_i420(decoder.decode(z, raw=True))
    assert torch.equal(torch.cat(out, 1), expected)


@pytest.mark.cuda
def test_nan_in_gpu_latents_is_reported_without_a_sync():
    decoder = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cuda")
    frames = cuda_frames("cuda", n=5)
    frames[2][0, 0, 0, 0] = float("nan")
    with pytest.raises(FlashdecodeError, match="NaN or Inf"):
        for _ in decoder.stream(iter(frames)):
            pass
    z = torch.stack(frames, 2)
    with pytest.raises(FlashdecodeError, match="NaN or Inf"):
        decoder.decode(z)
