"""`flashdecode decode` (latents -> video, streamed) and `flashdecode info` (what a latent file holds).

Data flows one way: latents_io reads latent frames (a file, or NPY arrays as they arrive on stdin) ->
Decoder.stream turns each into pixel chunks -> uint8 on the device -> VideoWriter's queue -> encoder
thread. Nothing holds the whole video: the pixels of a chunk are dropped once the writer has them.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ..memory import check_memory
from . import app
from .common import note, run_guarded


# -- choosing the latent space ------------------------------------------------------------------------

def resolve_latent_space(requested: str, latents, weights_meta: dict) -> str:
    """--latent-space, or for auto: the latents' metadata, the checkpoint's, then the channel count."""
    from ..errors import FlashdecodeError
    from ..latent_spaces import LATENT_SPACES

    if requested != "auto":
        if requested not in LATENT_SPACES:
            raise FlashdecodeError(f"unknown latent space {requested!r}; choose auto or {', '.join(LATENT_SPACES)}")
        space, why = requested, "--latent-space"
    else:
        from_file = latents.metadata.get("latent_space")
        from_weights = weights_meta.get("latent_space")
        if from_file in LATENT_SPACES and from_weights and from_file != from_weights:
            raise FlashdecodeError(f"{latents.name} holds {from_file} latents (its metadata) but the weights were trained "
                                   f"for {from_weights}; pass weights for {from_file}")
        space, why = latents.latent_space_guess()
        if from_file not in LATENT_SPACES and from_weights in LATENT_SPACES:
            space, why = from_weights, "the checkpoint"
    channels = LATENT_SPACES[space].channels if space else None
    if channels != latents.channels:
        ntchw_channels = latents.shape[2]  # what the channel count would be if the file were NTCHW
        plausible = ntchw_channels == channels if space else ntchw_channels in (16, 48)
        hint = " (or the file is NTCHW: pass --layout ntchw)" if latents.layout == "ncthw" and plausible else ""
        expected = f"latent space {space!r} ({why}) has {channels}" if space else \
            "wan2.1 has 16, wan2.2 and demo have 48"
        raise FlashdecodeError(f"{latents.name} has {latents.channels} channels (shape {list(latents.shape)} as "
                               f"[B,C,T,h,w], layout {latents.layout}) but {expected}; pass the matching "
                               f"--latent-space/--weights{hint}")
    return space


def _float(text, default: float) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def _device(name: str | None):
    """--device as a torch.device, refusing what this machine does not have (instead of a torch traceback)."""
    import torch

    from ..engine import resolve_device
    from ..errors import FlashdecodeError

    try:
        dev = resolve_device(name)
    except RuntimeError as e:
        raise FlashdecodeError(f"unknown --device {name!r} ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FlashdecodeError(f"--device {name} asked for, but this torch has no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise FlashdecodeError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    return dev


# -- the commands -------------------------------------------------------------------------------------

@app.command()
@run_guarded
def decode(
    input: str = typer.Argument(..., help="Latents: .safetensors, .npy, or '-' for stdin (NPY arrays as they arrive, "
                                          "or one safetensors file)."),
    output: str = typer.Option(None, "-o", "--output", help="Video: .mp4/.mkv/.mov/.webm, .y4m, a folder or "
                               "%05d.png pattern (PNG sequence), or '-' for stdout. Default: INPUT's name .mp4 "
                               "(stdout for stdin)."),
    model: str = typer.Option(None, "--model", help="Variant: tiny, xs, s, b, l, xl. Default: the checkpoint's, else s."),
    weights: str = typer.Option(None, "--weights", help="PATH to a .safetensors checkpoint, or 'random' (benchmarks). "
                                "Default: search the weights folders."),
    latent_space: str = typer.Option("auto", "--latent-space", help="wan2.1, wan2.2, demo, or auto (file metadata, "
                                     "then the checkpoint, then the channel count)."),
    layout: str = typer.Option(None, "--layout", help="ncthw or ntchw. Default: file metadata, else the channel "
                               "count where unambiguous, else ncthw."),
    key: str = typer.Option(None, "--key", help="Tensor name in a .safetensors file (default: 'latents' or the only one)."),
    raw: bool = typer.Option(False, "--raw", help="Latents are un-normalized VAE latents (default: normalized, "
                             "as diffusion pipelines pass them)."),
    device: str = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: cuda if available)."),
    dtype: str = typer.Option(None, "--dtype", help="bf16, fp16, fp32 (default: bf16 on cuda, fp32 on cpu)."),
    batch_index: int = typer.Option(None, "--batch-index", help="Decode only this item of a batch (default: every "
                                    "item, to OUTPUT_b0, OUTPUT_b1, ...)."),
    fps: float = typer.Option(None, "--fps", help="Frames per second (default: the file's 'fps' metadata, else 16)."),
    crf: int = typer.Option(None, "--crf", help="Quality for x264/x265/VP9/AV1 (lower is better; default 18 x264, 30 VP9)."),
    codec: str = typer.Option(None, "--codec", help="Encoder (default libx264; libvpx-vp9 for .webm)."),
    stdout_format: str = typer.Option(None, "--format", help="With -o -: y4m (default), raw (rgb24), or mp4 (fragmented)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display and no summary line."),
    json_path: Path = typer.Option(None, "--json", help="Write a JSON summary (frames, size, fps, memory, ...) here."),
) -> None:
    """Decode latents to video, streaming: frames are written while decoding runs, memory stays flat."""
    import contextlib

    from ..checkpoint import read_metadata
    from ..engine import load_decoder
    from ..errors import FlashdecodeError
    from ..latent_spaces import LATENT_SPACES
    from ..latents_io import open_latents
    from ..progress import DecodeProgress
    from ..video_io import VideoWriter, batch_output_name, output_kind, to_uint8_frames

    output = output or ("-" if input == "-" else Path(input).with_suffix(".mp4").name)
    output_kind(output)  # an unknown extension fails before anything is read
    if stdout_format is not None and output != "-":
        raise FlashdecodeError(f"--format applies to stdout (-o -) only; the output {output!r} is chosen by its name")
    if json_path is not None and not json_path.parent.is_dir():
        raise FlashdecodeError(f"--json {json_path}: folder {json_path.parent} does not exist")
    dev = _device(device)
    weights_meta = read_metadata(weights) if weights not in (None, "random") else {}
    space_hint = latent_space if latent_space in LATENT_SPACES else weights_meta.get("latent_space")
    channels = {LATENT_SPACES[space_hint].channels} if space_hint in LATENT_SPACES else None

    latents = open_latents(input, key=key, layout=layout, channels=channels)
    space = resolve_latent_space(latent_space, latents, weights_meta)
    B, C, T, h, w = latents.shape
    patch = LATENT_SPACES[space].patch
    if h % patch or w % patch:
        raise FlashdecodeError(f"latent grid {h}x{w} must be a multiple of {patch} for {space}; check the producer")
    if batch_index is not None and not 0 <= batch_index < B:
        raise FlashdecodeError(f"--batch-index {batch_index} is out of range: {latents.name} holds a batch of {B}")
    items = [batch_index] if batch_index is not None else list(range(B))
    if len(items) > 1 and output == "-":
        raise FlashdecodeError(f"{latents.name} holds a batch of {B}; stdout takes one video: pass --batch-index N")
    outputs = [output] if len(items) == 1 else [batch_output_name(output, i) for i in items]
    fps = fps or _float(latents.metadata.get("fps"), 16.0)

    with contextlib.ExitStack() as stack:
        writers = []
        for name in outputs:  # created now: an unwritable output fails before the model loads
            writers.append(VideoWriter(name, fps=fps, crf=crf, codec=codec, stdout_format=stdout_format or "y4m"))
            stack.callback(writers[-1].close)  # closes (flushes) on success, error and Ctrl-C alike

        variant = model or ("s" if weights == "random" else None)  # else: the checkpoint's, or any bundled one
        decoder = load_decoder(variant, space, weights=weights, device=dev, dtype=dtype)
        if decoder.random_weights:
            note("the weights are random (--weights random): the video is noise; use it to measure speed and memory")
        check_memory(decoder, len(items), h, w)

        chunks = latents.chunks
        if batch_index is not None:
            chunks = (z[batch_index:batch_index + 1] for z in chunks)
        progress = DecodeProgress(decoder.device, total_latent_frames=T, quiet=quiet)
        status = "stopped"
        try:
            for pixels in decoder.stream(chunks, raw=raw):
                frames = to_uint8_frames(pixels)  # [B,k,H,W,3] uint8 on the CPU
                for writer, item_frames in zip(writers, frames):
                    writer.write(item_frames)
                progress.update(1, frames.shape[0] * frames.shape[1])
            status = "ok"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            # Flush every output now, whatever happened: each one is a playable file of the frames so far.
            close_error = None
            for writer in writers:
                try:
                    writer.close()
                except Exception as e:
                    close_error = close_error or e
            if status == "ok" and close_error is not None:
                status = "stopped"
            written = min(wr.frames_written for wr in writers)
            where = ", ".join(outputs)
            stats = progress.finish("decoded" if status == "ok" else f"{status} after",
                                    f" -> {where}" if status == "ok" else f"; {where} holds {written} frames")
            if json_path is not None:
                H, W = decoder.pixel_size(h, w)
                summary = {"status": status, "input": latents.name, "outputs": outputs, "frames": written,
                           "width": W, "height": H, "fps": fps, "batch": len(items), "model": decoder.config.name,
                           "latent_space": space, "dtype": str(decoder.dtype).replace("torch.", ""),
                           "random_weights": decoder.random_weights, "parameters": decoder.num_parameters(), **stats}
                json_path.write_text(json.dumps(summary, indent=2) + "\n")
        if close_error is not None:
            raise close_error


@app.command()
@run_guarded
def info(
    input: str = typer.Argument(..., help="Latents: .safetensors, .npy, or '-' (stdin)."),
    key: str = typer.Option(None, "--key", help="Tensor name in a .safetensors file."),
    layout: str = typer.Option(None, "--layout", help="ncthw or ntchw (default: guess)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Shape, dtype, layout and latent-space guesses, and the frames a latent file decodes to."""
    import torch

    from ..latent_spaces import pixel_frames
    from ..latents_io import describe, open_latents

    latents = open_latents(input, key=key, layout=layout, check=False)
    T, bad = 0, 0
    for z in latents.chunks:  # a stream's length is known only once it has all arrived
        T += z.shape[2]
        bad += int((~torch.isfinite(z)).sum())
    latents.shape = (*latents.shape[:2], T, *latents.shape[3:])
    d = describe(latents)
    d["nonfinite_values"] = bad
    if as_json:
        print(json.dumps(d, indent=2))
        return
    B, C, T, h, w = d["shape"]
    size = f"{d['width']}x{d['height']}" if d["width"] else "? (unknown latent space)"
    rows = [
        ("input", d["input"]),
        ("shape", f"{list(d['shape'])} as [B, C, T, h, w]"),
        ("dtype", d["dtype"]),
        ("layout", f"{d['layout']} ({d['layout_reason']})"),
        ("latent space", f"{d['latent_space'] or '?'} ({d['latent_space_reason']})"),
        ("decodes to", f"{pixel_frames(T)} frames of {size}" + (f" per item, {B} items" if B > 1 else "")),
        ("NaN/Inf", "none" if not bad else f"{bad} values (decode will refuse)"),
    ]
    rows += [(f"metadata.{k}", str(v)) for k, v in d["metadata"].items()]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
