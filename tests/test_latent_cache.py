from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from flashdecode.training.demo_codec import PCATeacher
from flashdecode.training.latent_cache import LatentCache, from_uint8, to_uint8
from flashdecode.training.video_data import VideoClips

CLIP = Path(__file__).parent / "data" / "carphone_176x144_30fps_33f.mp4"


class CountingTeacher(PCATeacher):
    """A random orthonormal PCA teacher that counts its encode calls."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        basis = lambda d: torch.linalg.qr(torch.randn(d, 48, generator=g))[0].T  # noqa: E731
        super().__init__(torch.zeros(3072), basis(3072), torch.ones(48))
        self.calls = 0

    def encode(self, pixels):
        self.calls += 1
        return super().encode(pixels)


def make(tmp_path, seed=0, **kw):
    clips = VideoClips([CLIP], frames=5, size=(32, 32), num_clips=10, seed=seed)
    return clips, LatentCache(clips, kw.pop("teacher", None) or CountingTeacher(), tmp_path, shard_size=4, batch_size=3, **kw)


def test_second_epoch_reads_the_cache(tmp_path):
    clips, cache = make(tmp_path)
    assert len(cache) == 10 and cache.num_shards == 3 and cache.missing_shards() == [0, 1, 2]
    assert cache.build() == 3
    calls = cache.teacher.calls
    assert calls == 2 + 2 + 1  # batches of 3 within shards of 4, 4, 2
    for epoch in range(2):
        for i in torch.randperm(len(cache)).tolist():
            pixels, latents = cache[i]
            assert pixels.shape == (3, 5, 32, 32) and latents.shape == (48, 2, 2, 2)
    assert cache.teacher.calls == calls  # reads only
    pixels, latents = cache[7]
    assert torch.allclose(pixels, clips[7], atol=0.5 / 127.5 + 1e-6)  # uint8 storage: within half a level
    assert torch.allclose(latents, cache.teacher.encode(clips[7][None])[0], atol=1e-5)

    _, again = make(tmp_path)  # a new run with the same data and teacher: the cache is found, nothing is encoded
    assert again.dir == cache.dir and again.build() == 0 and again.teacher.calls == 0
    again[3]
    assert again.teacher.calls == 0
    with safe_open(str(cache.shard_path(1)), "pt") as f:
        meta = f.metadata()
        assert f.get_slice("pixels").get_dtype() == "U8"
    assert meta["teacher"] == "demo-pca" and meta["latent_space"] == "demo" and meta["first_index"] == "4"
    assert CLIP.name in meta["sources"] and (cache.dir / "manifest.json").is_file()


def test_a_change_gives_a_new_cache(tmp_path):
    _, cache = make(tmp_path)
    _, other_data = make(tmp_path, seed=1)
    teacher = CountingTeacher()
    teacher.group_std.mul_(2)
    _, other_teacher = make(tmp_path, teacher=teacher)
    assert len({cache.dir, other_data.dir, other_teacher.dir}) == 3
    assert cache.dir.name.startswith("demo-pca-5f-32x32-")


def test_lazy_shards_and_rank_split(tmp_path):
    clips, cache = make(tmp_path)
    cache[5]  # encodes only shard 1 on first use
    assert cache.missing_shards() == [0, 2]
    assert cache.build(rank=1, world_size=2) == 0  # rank 1 owns shard 1 only, already there
    assert cache.build(rank=0, world_size=2) == 2
    _, no_pixels = make(tmp_path, store_pixels=False)
    pixels, _ = no_pixels[2]
    assert torch.equal(pixels, clips[2])  # pixels come from the clips again
    with pytest.raises(IndexError):
        cache[10]


def test_uint8_round_trip():
    x = torch.linspace(-1, 1, 511)
    assert torch.allclose(from_uint8(to_uint8(x)), x, atol=0.5 / 127.5 + 1e-6)
    assert to_uint8(torch.tensor([-2.0, 2.0])).tolist() == [0, 255]
