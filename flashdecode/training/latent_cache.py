"""Encode training clips once with a teacher; later epochs read (pixels, latents) from safetensors shards.

The cache folder is named by what determines its content (teacher weights + clip set + shard layout), so
changing any of them starts a new folder instead of reading stale latents:

    <root>/<teacher>-<T>f-<H>x<W>-<key>/shard-00000.safetensors   # clips 0..63
                                       /manifest.json              # the fingerprint, for humans

A shard holds `latents` float32 [n, C, L, h, w] (normalized) and `pixels` uint8 [n, 3, T, H, W] (the training
targets, 4x smaller than float32; quantizing [-1, 1] to 256 levels costs under 0.002 in value).
Shards are written atomically (tmp + rename), so an interrupted build leaves only whole shards behind.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..video_io import from_uint8, to_uint8


class LatentCache(torch.utils.data.Dataset):
    """(pixels [3, T, H, W] in [-1, 1], latents [C, L, h, w]) for every clip of `clips`, teacher-encoded once.

    clips: a map-style dataset of pixel clips with .fingerprint() (e.g. VideoClips with a fixed seed), or pass
    `data_key` naming its content. Shards are made on first use, or all at once with build() (on the
    teacher's device, in batches of `batch_size`). With store_pixels=False the pixels come from `clips` again.
    With uint8_pixels=True stored pixels come back as they are stored (uint8 0..255, a quarter of the bytes to
    move): the training loop converts them where it trains (video_io.from_uint8).
    """

    def __init__(self, clips, teacher, root="runs/latent-cache", shard_size: int = 64, store_pixels: bool = True,
                 batch_size: int = 8, data_key: str | None = None, console=None, uint8_pixels: bool = False):
        self.clips, self.teacher, self.console = clips, teacher, console
        self.uint8_pixels = uint8_pixels
        self._open: dict[int, object] = {}  # shard -> safe_open handle (memory-mapped; opened once per process)
        self.shard_size, self.store_pixels, self.batch_size = shard_size, store_pixels, batch_size
        sample_shape = getattr(clips, "frames", None), getattr(clips, "size", None)
        self.fingerprint = {
            "teacher": teacher.name, "teacher_weights": teacher.fingerprint(),
            "latent_space": teacher.latent_space.name,
            "data": data_key if data_key is not None else clips.fingerprint(),
            "clips": len(clips), "shard_size": shard_size, "pixels": store_pixels,
        }
        key = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
        frames, size = sample_shape
        shape = f"{frames}f-{size[0]}x{size[1]}-" if frames and size else ""
        self.dir = Path(root) / f"{teacher.name}-{shape}{key}"

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def num_shards(self) -> int:
        return -(-len(self.clips) // self.shard_size)

    def shard_path(self, k: int) -> Path:
        return self.dir / f"shard-{k:05d}.safetensors"

    def missing_shards(self) -> list[int]:
        return [k for k in range(self.num_shards) if not self.shard_path(k).is_file()]

    def build(self, rank: int = 0, world_size: int = 1, progress: Callable[[int, int], None] | None = None) -> int:
        """Encode every missing shard k with k % world_size == rank (DDP ranks split the work); returns how many."""
        todo = [k for k in self.missing_shards() if k % world_size == rank]
        if todo and self.console is not None:
            self.console.log(f"encoding {len(todo)} of {self.num_shards} shards with {self.teacher.name} into {self.dir}")
        for done, k in enumerate(todo):
            self._encode_shard(k)
            if progress:
                progress(done + 1, len(todo))
        return len(todo)

    @torch.no_grad()
    def _encode_shard(self, k: int) -> None:
        indices = range(k * self.shard_size, min((k + 1) * self.shard_size, len(self.clips)))
        latents, pixels = [], []
        device = next(itertools.chain(self.teacher.parameters(), self.teacher.buffers())).device
        for start in range(0, len(indices), self.batch_size):
            batch = torch.stack([self.clips[i] for i in indices[start:start + self.batch_size]])
            latents.append(self.teacher.encode(batch.to(device)).float().cpu())
            if self.store_pixels:
                pixels.append(to_uint8(batch))
        tensors = {"latents": torch.cat(latents).contiguous()}
        if self.store_pixels:
            tensors["pixels"] = torch.cat(pixels).contiguous()
        spec = getattr(self.clips, "spec", None)
        meta = {
            "format": "flashdecode-latent-cache", "teacher": self.teacher.name,
            "latent_space": self.teacher.latent_space.name, "normalized": "true",
            "clip_shape": json.dumps(list(batch.shape[1:])),
            "first_index": str(indices[0]),
            "sources": json.dumps([str(spec(i)) if spec else str(i) for i in indices]),
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "manifest.json"
        if not manifest.is_file():
            _atomic_write_text(manifest, json.dumps(self.fingerprint, indent=1, default=str))
        tmp = self.shard_path(k).with_suffix(f".tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, self.shard_path(k))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k, j = divmod(i, self.shard_size)
        if k not in self._open:
            if not self.shard_path(k).is_file():
                self._encode_shard(k)
            self._open[k] = safe_open(str(self.shard_path(k)), framework="pt")  # memory-mapped: reads only row j
        f = self._open[k]
        latents = f.get_slice("latents")[j:j + 1][0]
        if not self.store_pixels:
            return self.clips[i], latents
        pixels = f.get_slice("pixels")[j:j + 1][0]
        return (pixels if self.uint8_pixels else from_uint8(pixels)), latents

    def __getstate__(self):  # DataLoader workers open their own handles
        return {**self.__dict__, "_open": {}}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


__all__ = ["LatentCache", "to_uint8", "from_uint8"]
