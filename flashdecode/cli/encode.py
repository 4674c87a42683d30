"""`flashdecode encode` (video -> normalized latents with a teacher encoder) and the hidden
`flashdecode fit-demo-teacher` (re-make the bundled demo PCA teacher).

Data flows one way: video frames (decoded as needed) -> center crop + resize -> pixel chunks (1 frame,
then 4 at a time) -> teacher -> latent frames -> a .safetensors/.npy file, or NPY arrays on stdout as they
are made, so `flashdecode encode clip.mp4 -o - | flashdecode decode - ...` is a pipeline.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import typer

from ..errors import FlashdecodeError, shown
from . import app
from .common import check_frames, parse_hw, run_guarded

OUTPUT_DTYPES = ("float32", "float16")


def choose_frames(available: int, frames: int | None, max_frames: int | None, video, start: int) -> int:
    from ..training.video_data import largest_4k1

    if max_frames is not None and max_frames < 1:
        raise FlashdecodeError(f"--max-frames {max_frames} must be at least 1")
    if available < 1:
        raise FlashdecodeError(f"{video} has no frames from --start {start}; use an earlier --start")
    if frames is None:
        return largest_4k1(min(available, max_frames) if max_frames else available)
    check_frames(frames)
    if frames > available:
        raise FlashdecodeError(f"{video} has only {available} frames from --start {start}, too few for --frames {frames}; "
                               f"use --frames {largest_4k1(available)} or an earlier --start")
    return frames


def check_output(path: Path) -> None:
    """Refuse an output that cannot be written, before any frame is encoded: a folder, a path through a file,
    a folder that is not writable."""
    if path.is_dir():
        raise FlashdecodeError(f"-o {path} is a folder; give a file name like {path / 'latents.safetensors'}")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir():
        raise FlashdecodeError(f"-o {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FlashdecodeError(f"-o {path}: folder {existing} is not writable; pick another path")


def write_latents(path: Path, latents, metadata: dict) -> None:
    """latents -> .npy (bare array) or .safetensors ('latents' + metadata), written to a temporary name and moved
    into place, so a full disk never leaves a half-written file under the final name."""
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, latents.numpy(), allow_pickle=False)
        else:
            save_file({"latents": latents}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        raise FlashdecodeError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}") from None


def finite_frames(latent_frames, dtype, teacher: str):
    """Latent frames cast to the output dtype, each checked before it is written: a teacher that makes NaN or Inf
    (corrupt weights, or values past float16's range) is one line, never a file of NaN latents and exit 0."""
    import torch

    for i, z in enumerate(latent_frames):
        z = z.to(dtype)
        if not bool(torch.isfinite(z).all()):
            why = "its weights are corrupt, or the values pass float16's range (try --dtype float32)" \
                if dtype == torch.float16 else "its weights are corrupt"
            raise FlashdecodeError(f"the {teacher} teacher made NaN or Inf latents in latent frame {i}; {why}")
        yield z


def pixel_chunks(video, start: int, frames: int, size, device):
    """[1, 3, t, H, W] chunks in [-1, 1]: the first frame alone, then 4 frames at a time (the causal latent grouping)."""
    import torch

    from ..training.video_data import iter_frames, to_clip

    pending = []
    for i, frame in enumerate(iter_frames(video, start, frames)):
        pending.append(torch.from_numpy(frame))
        if i == 0 or len(pending) == 4:
            yield to_clip(torch.stack(pending), size, "center").unsqueeze(0).to(device)
            pending = []


@app.command()
@run_guarded
def encode(
    video: Path = typer.Argument(..., help="Input video (anything PyAV/FFmpeg reads)."),
    output: str = typer.Option(..., "-o", "--output", help="latents.safetensors (key 'latents' [1,C,L,h,w] + metadata), "
                               ".npy ([1,C,L,h,w]), or '-' for stdout: NPY arrays, one latent frame [C,h,w] each."),
    teacher: str = typer.Option("demo", "--teacher", help="demo (the bundled PCA codec), wan2.1 or wan2.2 (with --vae)."),
    vae: Path = typer.Option(None, "--vae", help="Local Wan VAE: a diffusers AutoencoderKLWan folder or a checkpoint file."),
    teacher_weights: Path = typer.Option(None, "--teacher-weights", help="Demo PCA teacher file (default: "
                                         "demo-pca-teacher.safetensors in the weights folders)."),
    size: str = typer.Option(None, "--size", help="HxW, multiples of 16: center crop to that aspect ratio, then "
                             "resize. Default: the video's own size, center-cropped to multiples of 16."),
    frames: int = typer.Option(None, "--frames", help="Pixel frames to encode, 4k+1. Default: the most the video has."),
    max_frames: int = typer.Option(None, "--max-frames", help="Cap for the default --frames."),
    start: int = typer.Option(0, "--start", help="First frame to encode."),
    dtype: str = typer.Option("float32", "--dtype", help="Output dtype: float32 or float16."),
    device: str = typer.Option(None, "--device", help="cuda, cpu (default: cuda if available)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary line."),
) -> None:
    """Encode a video to normalized latents with a teacher encoder (default: the bundled demo PCA codec)."""
    import numpy as np
    import torch

    from ..memory import check_encode_memory
    from ..engine import resolve_device
    from ..training.teachers import load_teacher
    from ..training.video_data import probe, round_down_16

    if output != "-" and Path(output).suffix.lower() not in (".safetensors", ".npy"):
        raise FlashdecodeError(f"unknown output extension for {output!r}; use .safetensors, .npy, or '-' for stdout")
    if output == "-" and (sys.stdout is None or sys.stdout.closed):  # `>&-`: Python starts with no stdout at all
        raise FlashdecodeError("-o - writes to stdout, which is closed; pipe it (| flashdecode decode - ...) or pass -o FILE")
    if output == "-" and sys.stdout.isatty():
        raise FlashdecodeError("-o - writes binary NPY arrays to stdout, which is a terminal; pipe it "
                               "(| flashdecode decode - ...) or pass -o latents.safetensors")
    if dtype not in OUTPUT_DTYPES:
        raise FlashdecodeError(f"--dtype {dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}")
    if start < 0:
        raise FlashdecodeError(f"--start {start} is negative; frames count from 0")
    if teacher not in ("wan2.1", "wan2.2") and vae is not None:
        raise FlashdecodeError("--vae is for --teacher wan2.1/wan2.2; for the demo teacher use --teacher-weights")
    if teacher in ("wan2.1", "wan2.2") and teacher_weights is not None:  # else silently not the file asked for
        raise FlashdecodeError(f"--teacher-weights is the demo teacher's file; for --teacher {teacher} pass the VAE as --vae")
    if output != "-":
        check_output(Path(output))
    target = parse_hw(size)
    check_frames(frames)
    dev = resolve_device(device)
    info = probe(video)  # missing file / not a video: a clear error before any model loads
    target = target or round_down_16(info.height, info.width)
    if min(target) < 16:
        raise FlashdecodeError(f"{video} is {info.width}x{info.height}, smaller than one 16x16 latent cell; pass --size")
    n = choose_frames(info.frames - start, frames, max_frames, video, start)
    check_encode_memory(teacher, *target, n, dev, (info.height, info.width))

    enc = load_teacher(teacher, vae if teacher != "demo" else teacher_weights, device=dev)
    out_dtype = getattr(torch, dtype)
    latent_frames = finite_frames(enc.encode_stream(pixel_chunks(video, start, n, target, dev)), out_dtype, enc.name)

    if output == "-":
        stdout = sys.stdout.buffer
        count = 0
        for z in latent_frames:  # written as made: the consumer starts decoding after the first frame
            # via bytes, not write_array(stdout): numpy's tofile on a closed pipe raises a bare OSError, where
            # a write raises BrokenPipeError (exit 141, quietly, like decode)
            frame = io.BytesIO()
            np.lib.format.write_array(frame, z[0].cpu().numpy(), allow_pickle=False)
            stdout.write(frame.getbuffer())
            stdout.flush()
            count += 1
        shape = [1, enc.latent_space.channels, count, *z.shape[-2:]]
    else:
        latents = torch.stack(list(latent_frames), dim=2).cpu().contiguous()
        shape = list(latents.shape)
        write_latents(Path(output), latents, metadata={
            "layout": "NCTHW", "latent_space": enc.latent_space.name, "normalized": "true",
            "source": str(video), "fps": f"{info.fps:g}", "frames": str(n), "start": str(start),
            "size": f"{target[0]}x{target[1]}", "teacher": enc.name})
    if not quiet:
        print(f"encoded {n} frames of {shown(video)} at {target[0]}x{target[1]} (HxW) with {enc.name} -> "
              f"{enc.latent_space.name} latents {shape} {dtype} -> {'stdout' if output == '-' else shown(output)}",
              file=sys.stderr)


@app.command("fit-demo-teacher", hidden=True)
@run_guarded
def fit_demo_teacher(
    videos: list[str] = typer.Argument(..., help="Videos or folders to fit on ('file:start-end' picks frames)."),
    out: Path = typer.Option(Path("weights/demo-pca-teacher.safetensors"), "-o", "--out"),
    holdout: list[str] = typer.Option([], "--holdout", help="'file' or 'file:start-end' (end exclusive) kept out of the fit."),
    eval_on: list[str] = typer.Option([], "--eval", help="Clips for the round-trip PSNR/SSIM (256x256 center crop), "
                                      "e.g. the held-out part with its full path."),
    clips: int = typer.Option(256, "--clips", help="Random 17-frame clips to fit on (half at 256x256, half at 128x128)."),
    seed: int = typer.Option(0, "--seed"),
    credits: str = typer.Option("", "--credits", help="Attribution of the videos, stored in the file's metadata."),
) -> None:
    """Fit the bundled demo codec's PCA teacher (takes well under a minute on a CPU)."""
    from ..training.demo_codec import fit_demo_teacher as fit

    fit(videos, holdout=holdout, eval_sources=eval_on, out=out, clips=clips, seed=seed, credits=credits,
        log=lambda m: print(m, file=sys.stderr))
