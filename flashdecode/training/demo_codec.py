"""The bundled demo codec: a frozen linear teacher (PCA of 16x16 pixel patches) and its exact linear inverse.

It gives Wan2.2's shape contract without Wan weights: 48 channels, /16 in space, /4 causal in time. Every
group of 4 frames' 16x16 patch (3*4*16*16 = 3072 values) is projected on a 48-component PCA basis, each
coefficient divided by its standard deviation on the fitting data, so latents are per-channel mean 0,
variance 1 ("demo" latent space, already normalized).

The lone first frame (768 values) has its own basis: the group decoder's last sub-frame (768 x 48), with a
ridge least-squares encoder. A separately fitted first-frame PCA would reconstruct it ~1-2 dB better, but a
decoder cannot tell a first latent frame from a later one (both are 48 unit-variance numbers per cell), so it
could not know which basis to invert; tied to the last sub-frame, the first frame decodes exactly as
FlashDecoder's first-frame rule says: make 4 sub-frames as usual and keep the last. The inverse (`decode`)
is the baseline a learned decoder must beat. Patch vectors are ordered (channel, frame, row, col).
"""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..checkpoint import FLOAT_DTYPES, check_finite
from ..errors import FlashdecodeError, shown
from ..latent_spaces import get_latent_space

FORMAT = "flashdecode-pca-teacher"  # not "flashdecode": decoder weight searches skip this file
DEFAULT_NAME = "demo-pca-teacher.safetensors"
GROUP = 4  # pixel frames per later latent frame
RIDGE = 1e-3  # first-frame encoder: ridge weight relative to the mean eigenvalue; keeps its latents at unit scale


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, 3, t, H, W] -> [B, H/p, W/p, 3*t*p*p] (vector order: channel, frame, row, col)."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // patch, patch, w // patch, patch)
    return x.permute(0, 3, 5, 1, 2, 4, 6).reshape(b, h // patch, w // patch, c * t * patch * patch)


def unpatchify(v: torch.Tensor, frames: int, patch: int) -> torch.Tensor:
    """Inverse of patchify: [B, h, w, 3*t*p*p] -> [B, 3, t, h*p, w*p]."""
    b, h, w, _ = v.shape
    x = v.reshape(b, h, w, 3, frames, patch, patch)
    return x.permute(0, 3, 4, 1, 5, 2, 6).reshape(b, 3, frames, h * patch, w * patch)


class PCATeacher(torch.nn.Module):
    """Pixels [B, 3, 4k+1, H, W] in [-1, 1] <-> normalized latents [B, C, 1+k, H/16, W/16], both linear."""

    name = "demo-pca"

    def __init__(self, group_mean, group_basis, group_std, patch: int = 16, metadata: dict | None = None):
        super().__init__()
        # basis rows are orthonormal principal directions; std is each coefficient's spread on the fit data.
        self.patch = patch
        for key, value in dict(group_mean=group_mean, group_basis=group_basis, group_std=group_std).items():
            self.register_buffer(key, value.float().contiguous())
        # The first frame's basis: the last sub-frame of the group decoder, with a ridge encoder.
        D, m = self.sub_frame_decoder()
        gram = D[-1].T @ D[-1]
        ridge = RIDGE * gram.trace() / gram.shape[0] * torch.eye(gram.shape[0])
        self.register_buffer("first_encoder", torch.linalg.solve(gram + ridge, D[-1].T), persistent=False)
        self.metadata = dict(metadata or {})
        self.latent_space = get_latent_space("demo")

    @property
    def channels(self) -> int:
        return self.group_basis.shape[0]

    @property
    def spatial(self) -> int:
        return self.patch

    # ------------------------------------------------------------------ encode / decode

    def _project(self, x, mean, basis, std) -> torch.Tensor:
        v = patchify(x.to(basis), self.patch)
        return ((v - mean) @ basis.T / std).permute(0, 3, 1, 2)  # [B, C, h, w]

    def _reconstruct(self, z, mean, basis, std, frames) -> torch.Tensor:
        v = (z.to(basis).permute(0, 2, 3, 1) * std) @ basis + mean
        return unpatchify(v, frames, self.patch)

    def encode_first(self, frame: torch.Tensor) -> torch.Tensor:
        """The first frame [B, 3, 1, H, W] -> latent frame [B, C, h, w]."""
        D, m = self.sub_frame_decoder()
        v = patchify(frame.to(m), self.patch) - m[-1]
        return (v @ self.first_encoder.T).permute(0, 3, 1, 2)

    def encode_group(self, frames: torch.Tensor) -> torch.Tensor:
        """A later group of 4 frames [B, 3, 4, H, W] -> latent frame [B, C, h, w]."""
        return self._project(frames, self.group_mean, self.group_basis, self.group_std)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixels, self.patch)
        first = self.encode_first(pixels[:, :, :1])
        b, c, t, h, w = pixels.shape
        if t == 1:
            return first.unsqueeze(2)
        # All later groups at once: fold the group index into the batch.
        groups = pixels[:, :, 1:].reshape(b, c, (t - 1) // GROUP, GROUP, h, w).transpose(1, 2).reshape(-1, c, GROUP, h, w)
        rest = self.encode_group(groups)
        rest = rest.reshape(b, -1, *rest.shape[1:]).transpose(1, 2)  # [B, C, k, h, w]
        return torch.cat([first.unsqueeze(2), rest], dim=2)

    @torch.no_grad()
    def encode_stream(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Pixel chunks (first 1 frame, then 4 at a time) [B, 3, t, H, W] -> latent frames [B, C, h, w], one per chunk."""
        for i, chunk in enumerate(chunks):
            if chunk.shape[2] != (1 if i == 0 else GROUP):
                raise ValueError(f"chunk {i} has {chunk.shape[2]} frames; the first chunk is 1 frame, later ones 4")
            yield self.encode_first(chunk) if i == 0 else self.encode_group(chunk)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [B, C, L, h, w] -> pixels [B, 3, 1+4(L-1), 16h, 16w] in [-1, 1] (the linear inverse):
        every latent frame makes 4 sub-frames, the first keeps only its last."""
        b, c, length, h, w = latents.shape
        z = latents.transpose(1, 2).reshape(-1, c, h, w)
        px = self._reconstruct(z, self.group_mean, self.group_basis, self.group_std, GROUP)  # [B*L, 3, 4, H, W]
        px = px.reshape(b, length, 3, GROUP, *px.shape[-2:]).permute(0, 2, 1, 3, 4, 5).flatten(2, 3)
        return px[:, :, GROUP - 1 :].clamp(-1, 1)

    def sub_frame_decoder(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(D [4, 768, C], m [4, 768]): sub-frame j of a latent frame is D[j] @ z + m[j] per patch, in
        (channel, row, col) order. The whole codec in two tensors; `linear_init` builds a FlashDecoder from it."""
        c, n = self.channels, 3 * self.patch**2
        D = (self.group_std[:, None] * self.group_basis).T.reshape(3, GROUP, n // 3, c).transpose(0, 1)
        return D.reshape(GROUP, n, c), self.group_mean.reshape(3, GROUP, n // 3).transpose(0, 1).reshape(GROUP, n)

    # ------------------------------------------------------------------ files

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for key, value in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().cpu().float().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "latent_space": "demo", "normalized": "true", "patch": str(self.patch),
                "components": str(self.channels), "vector_order": "channel,frame,row,col"}
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in self.metadata.items()})
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path=None) -> "PCATeacher":
        """Load from `path`, or find demo-pca-teacher.safetensors in the weights folders."""
        path = Path(path) if path is not None else default_path()
        if path is None or not path.is_file():
            raise FlashdecodeError(f"demo teacher {path or DEFAULT_NAME} not found; re-make it with "
                                   "`flashdecode fit-demo-teacher VIDEOS...` or pass its path")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                if meta.get("format") != FORMAT:
                    raise FlashdecodeError(f"{shown(path)} is not a demo PCA teacher (format {meta.get('format')!r}); "
                                           "pass a file written by `flashdecode fit-demo-teacher`")
                patch = check_header(path, meta, {k: f.get_slice(k) for k in f.keys()})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise FlashdecodeError(f"{shown(path)} is not a readable safetensors file ({e}); re-make it with "
                                   "`flashdecode fit-demo-teacher`") from None
        check_values(path, state)
        try:
            teacher = cls(**state, patch=patch, metadata=_parse_meta(meta))
        except torch.linalg.LinAlgError:  # orthonormal rows that leave the last sub-frame empty
            raise FlashdecodeError(f"{shown(path)}: its basis gives the first frame no encoder (a singular system); "
                                   f"{REMAKE}") from None
        check_finite({"first_encoder": teacher.first_encoder}, path, REMAKE)
        return teacher


# ---------------------------------------------------------------------------------------- file checks
# A teacher file is checked like a decoder checkpoint before use: the names, dtypes and shapes its header
# claims, then its values. A NaN or zero standard deviation would otherwise make NaN latents and exit 0.

REMAKE = "re-make it with `flashdecode fit-demo-teacher`"
TENSORS = ("group_mean", "group_basis", "group_std")
MAX_PATCH = 64  # 64x64 patches: a 48 x 49152 basis (9 MB); larger claims are junk, not teachers
STD_FLOOR = 1e-7  # the fit floors variances at 1e-12 (std 1e-6); smaller divides pixels into overflowing latents


def check_header(path, meta: dict, slices: dict) -> int:
    """Names, dtypes and shapes from the file's header, against its `patch` metadata: returns the patch size.
    Nothing is read or allocated until the header is known to describe a teacher."""
    found = set(slices)
    problems = [f"{k} missing" for k in TENSORS if k not in found] + [f"{shown(k, 80)} unexpected" for k in sorted(found - set(TENSORS))]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FlashdecodeError(f"{shown(path)} is not a complete demo PCA teacher: {problems[0]}{more}; {REMAKE}")
    patch = meta.get("patch", "16")
    if not (patch.isdecimal() and 2 <= int(patch) <= MAX_PATCH):
        raise FlashdecodeError(f"{shown(path)} has patch metadata {patch[:40]!r}, not a whole number from 2 to {MAX_PATCH}; "
                               f"{REMAKE}")
    patch, channels = int(patch), get_latent_space("demo").channels
    dim = 3 * GROUP * patch * patch
    expected = {"group_mean": [dim], "group_basis": [channels, dim], "group_std": [channels]}
    for k in TENSORS:
        dtype, shape = slices[k].get_dtype(), list(slices[k].get_shape())
        if dtype not in FLOAT_DTYPES:
            raise FlashdecodeError(f"{shown(path)} holds {k} as {dtype}, not floating point; {REMAKE}")
        if shape != expected[k]:
            raise FlashdecodeError(f"{shown(path)}: {k} is {shape} in the file, {expected[k]} for {channels} components of "
                                   f"{patch}x{patch} patches (its patch metadata); {REMAKE}")
    if meta.get("components", str(channels)) != str(channels):
        raise FlashdecodeError(f"{shown(path)} has components metadata {meta['components'][:40]!r}, not {channels}; {REMAKE}")
    return patch


def check_values(path, state: dict[str, torch.Tensor]) -> None:
    """Finite values; standard deviations a latent can be divided by; orthonormal basis rows and a mean inside
    the pixel range (what a fit makes), so that pixels in [-1, 1] give finite latents of sane size."""
    check_finite(state, path, REMAKE)
    std = state["group_std"].double()
    if bool((std < STD_FLOOR).any()):
        i = int(std.argmin())
        raise FlashdecodeError(f"{shown(path)}: group_std[{i}] is {std[i].item():.3g}; a standard deviation below "
                               f"{STD_FLOOR:g} would divide latents by (almost) zero; {REMAKE}")
    basis = state["group_basis"].double()
    off = (basis @ basis.T - torch.eye(basis.shape[0], dtype=torch.float64)).abs().max().item()
    if off > 1e-3:
        raise FlashdecodeError(f"{shown(path)}: the rows of group_basis are not orthonormal (off by {off:.3g}); {REMAKE}")
    if bool((state["group_mean"].abs() > 1.001).any()):
        raise FlashdecodeError(f"{shown(path)}: group_mean leaves the pixel range [-1, 1]; {REMAKE}")


def _parse_meta(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v) if v[:1] in "[{" else v
        except json.JSONDecodeError:
            out[k] = v
    return out


def _check_pixels(pixels: torch.Tensor, patch: int) -> None:
    if pixels.ndim != 5 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixels [B, 3, T, H, W], got {list(pixels.shape)}")
    t, h, w = pixels.shape[2:]
    if (t - 1) % GROUP or h % patch or w % patch:
        raise ValueError(f"pixels {list(pixels.shape)}: T must be 4k+1 and H, W multiples of {patch}")


def default_path() -> Path | None:
    """demo-pca-teacher.safetensors in the weights folders ($FLASHDECODE_WEIGHTS, ./weights, the repo's weights/)."""
    from ..checkpoint import weights_dirs

    return next((d / DEFAULT_NAME for d in weights_dirs() if (d / DEFAULT_NAME).is_file()), None)


# ---------------------------------------------------------------------------------------- fitting

class Moments:
    """Streaming mean and covariance of vectors: float32 products of ~8k rows at a time, summed in float64."""

    def __init__(self, dim: int, rows_per_product: int = 8192):
        self.n, self.rows = 0, rows_per_product
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self._pending: list[torch.Tensor] = []

    def add(self, v: torch.Tensor) -> None:
        self._pending.append(v.reshape(-1, self.sum.numel()).float())
        if sum(p.shape[0] for p in self._pending) >= self.rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            v = torch.cat(self._pending)
            self._pending = []
            self.n += v.shape[0]
            self.sum += v.sum(0).double()
            self.outer += (v.T @ v).double()

    def pca(self, components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean [D], basis [components, D] with orthonormal rows, std [components]), largest variance first."""
        self._flush()
        if self.n < 2:
            raise ValueError("need at least 2 samples to fit a PCA")
        mean = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # MKL's threaded eigh crawls (10x slower) when the cores are shared; one thread doesn't
        try:
            var, vecs = torch.linalg.eigh(cov)  # ascending
        finally:
            torch.set_num_threads(threads)
        var, vecs = var.flip(0)[:components], vecs.flip(1)[:, :components]
        vecs = vecs * torch.where(vecs.sum(0) < 0, -1.0, 1.0)  # a fixed sign per component: reproducible files
        std = var.clamp_min(1e-12).sqrt()
        return mean.float(), vecs.T.float().contiguous(), std.float()


def fit_pca_teacher(clips: Iterable[torch.Tensor], components: int = 48, patch: int = 16,
                    patches_per_clip: int = 256, seed: int = 0, metadata: dict | None = None) -> PCATeacher:
    """Fit the two bases on clips [3, 4k+1, H, W] in [-1, 1] (k >= 1).

    The basis sees every aligned 4-frame group (the first frame's basis derives from it, see PCATeacher).
    `patches_per_clip` random patches per clip keep the covariance cheap while many clips keep it diverse.
    """
    group = Moments(3 * GROUP * patch * patch)
    g = torch.Generator().manual_seed(seed)
    sample = lambda v: v[torch.randperm(v.shape[0], generator=g)[:patches_per_clip]]  # noqa: E731
    count = 0
    for clip in clips:
        _check_pixels(clip.unsqueeze(0), patch)
        c, t, h, w = clip.shape
        if t > 1:
            groups = clip[:, 1:].reshape(c, (t - 1) // GROUP, GROUP, h, w).transpose(0, 1)  # [k, 3, 4, H, W]
            group.add(sample(patchify(groups, patch).reshape(-1, group.sum.numel())))
        count += 1
    group._flush()
    if group.n < components:
        raise ValueError(f"{group.n} group patches are too few for {components} components")
    meta = {"clips_seen": count, "patches": group.n, **(metadata or {})}
    return PCATeacher(*group.pca(components), patch=patch, metadata=meta)


def baseline_quality(teacher, clips: Iterable[tuple[str, torch.Tensor]]) -> list[dict]:
    """PSNR/SSIM of the teacher's own round trip (encode -> linear decode) on named clips [3, T, H, W]."""
    from .metrics import psnr, ssim

    rows = []
    for name, clip in clips:
        recon = teacher.decode(teacher.encode(clip.unsqueeze(0)))
        rows.append({"clip": name, "frames": clip.shape[1], "size": list(clip.shape[-2:]),
                     "psnr": round(psnr(recon, clip)[0], 3), "ssim": round(ssim(recon, clip)[0], 4)})
    return rows


def fit_demo_teacher(sources: Sequence, holdout: Sequence[str] = (), eval_sources: Sequence[str] = (),
                     out=None, clips: int = 256, sizes: Sequence[tuple[int, int]] = ((256, 256), (128, 128)),
                     frames: int = 17, seed: int = 0, cache_mb: float = 1536, credits: str = "",
                     log=print) -> tuple[PCATeacher, list[dict]]:
    """The recipe behind weights/demo-pca-teacher.safetensors: random 17-frame clips at several sizes, random
    crops between native resolution and a whole-frame downscale, held-out parts excluded; then the round-trip
    PSNR/SSIM on `eval_sources` (256x256 center crops), stored in the file's metadata. Decoded videos stay in
    memory (up to `cache_mb`) so each is decoded once."""
    import time

    from .video_data import VideoClips, eval_clips

    t0 = time.time()
    per_size = max(1, clips // len(sizes))
    datasets = [VideoClips(sources, frames, size, per_size, seed + i, holdout=holdout, cache_mb=cache_mb)
                for i, size in enumerate(sizes)]
    for ds in datasets[1:]:
        ds._cache = datasets[0]._cache  # one decoded copy of each video for all sizes
    stream = (clip for ds in datasets for clip in ds)
    teacher = fit_pca_teacher(stream, seed=seed, metadata={
        "clips": sorted({str(s) for ds in datasets for s in ds.segments}), "holdout": list(holdout),
        "fit": {"clips": per_size * len(sizes), "frames": frames, "sizes": [list(s) for s in sizes], "seed": seed},
        "date": datetime.date.today().isoformat(), **({"credits": credits} if credits else {})})
    log(f"fitted on {teacher.metadata['clips_seen']} clips, {teacher.metadata['patches']} patches in {time.time() - t0:.1f} s")
    report = baseline_quality(teacher, eval_clips(list(eval_sources), size=(256, 256))) if eval_sources else []
    for row in report:
        log(f"held-out {row['clip']} {row['size'][0]}x{row['size'][1]} {row['frames']} frames: "
            f"PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}")
    teacher.metadata["eval"] = report
    if out is not None:
        teacher.save(out)
        log(f"wrote {out} ({Path(out).stat().st_size / 1e3:.0f} kB)")
    return teacher, report


__all__ = ["PCATeacher", "patchify", "unpatchify", "Moments", "fit_pca_teacher", "baseline_quality", "fit_demo_teacher",
           "default_path", "FORMAT", "DEFAULT_NAME"]
