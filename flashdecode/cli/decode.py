"""`flashdecode decode` (latents -> video, streamed) and `flashdecode info` (what a latent file holds).

`decode` is `flashdecode.decode_file` (pipeline.py) plus option parsing, the signal handlers and exit codes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from . import app
from .common import run_guarded


# -- the commands -------------------------------------------------------------------------------------

@app.command()
@run_guarded
def decode(
    input: list[str] = typer.Argument(..., help="Latents: .safetensors, .npy, ComfyUI .latent, torch.save .pt/.pth, "
                                                "or '-' for stdin (NPY arrays as they arrive, or one safetensors "
                                                "file). Several files, a folder or a glob: one video each into the "
                                                "folder -o DIR/ (under torchrun, shared out across the ranks, one "
                                                "GPU each)."),
    output: str = typer.Option(None, "-o", "--output", help="Video: .mp4/.mkv/.mov/.webm, .gif/.webp/.apng "
                               "(animated previews), .y4m, a folder or %05d.png pattern (PNG sequence), or '-' for "
                               "stdout. Default: INPUT's name .mp4 (stdout for stdin)."),
    model: str = typer.Option(None, "--model", help="Variant: tiny, xs, s, b, l, xl; or wan2.1-vae, wan2.2-vae (the "
                              "stock Wan VAE decoder, streamed); or taew2.1, taew2.2 (tiny TAEHV decoders). Default: "
                              "the checkpoint's, else s."),
    weights: str = typer.Option(None, "--weights", help="PATH to a .safetensors checkpoint, or 'random' (benchmarks). "
                                "wan2.x-vae: a diffusers AutoencoderKLWan folder, a pipeline folder with vae/, or the "
                                "Wan VAE .pth/.safetensors; taew*: a TAEHV .safetensors/.pth (taew2_1.safetensors etc.). "
                                "Default: search the weights folders."),
    latent_space: str = typer.Option("auto", "--latent-space", help="wan2.1, wan2.2, demo, or auto (file metadata, "
                                     "then the checkpoint, then the channel count)."),
    layout: str = typer.Option(None, "--layout", help="ncthw or ntchw. Default: file metadata, else the channel "
                               "count where unambiguous, else ncthw."),
    key: str = typer.Option(None, "--key", help="Tensor name in a .safetensors/.latent file or a torch.save dict "
                            "(default: latents, latent_tensor, samples, latent, z, or the only one)."),
    raw: bool = typer.Option(None, "--raw/--no-raw", help="Latents are raw (un-normalized) VAE latents / normalized "
                             "ones, as diffusion pipelines pass them. Default: what the file says (ComfyUI .latent: "
                             "raw), else normalized."),
    device: str = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: cuda if available)."),
    dtype: str = typer.Option(None, "--dtype", help="bf16, fp16, fp32, or fp8 (e4m3 weights, bf16 elsewhere) "
                              "(default: bf16 on cuda, fp32 on cpu)."),
    compile: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the per-frame step (default: no: "
                                 "its warm-up outweighs its gain for clips under minutes)."),
    batch_index: int = typer.Option(None, "--batch-index", help="Decode only this item of a batch (default: every "
                                    "item, to OUTPUT_b0, OUTPUT_b1, ...)."),
    fps: float = typer.Option(None, "--fps", help="Frames per second (default: the file's 'fps' metadata, else 16)."),
    scale: float = typer.Option(None, "--scale", help="Resize the frames by this factor (e.g. 0.5 for a preview), "
                                "to even sizes, on the device before they are written (default: 1)."),
    crf: int = typer.Option(None, "--crf", help="Quality for x264/x265/VP9/AV1 (lower is better; default 18 x264, 30 VP9)."),
    codec: str = typer.Option(None, "--codec", help="Encoder (default libx264; libvpx-vp9 for .webm)."),
    preset: str = typer.Option(None, "--preset", help="Encoder speed preset (x264/x265: ultrafast ... veryslow; "
                               "default veryfast, which keeps pace with the decoder)."),
    overwrite: bool = typer.Option(False, "--overwrite", "-y", help="Replace the frames of an earlier run in a PNG "
                                   "folder (without it, a folder already holding such frames is refused)."),
    stdout_format: str = typer.Option(None, "--format", help="With -o -: y4m (default), raw (rgb24), or mp4 (fragmented)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display and no summary line."),
    json_path: Path = typer.Option(None, "--json", help="Write a JSON summary (frames, size, fps, memory, ...) here."),
) -> None:
    """Decode latents to video, streaming: frames are written while decoding runs, memory stays flat."""
    from ..batch import decode_files, is_many, torchrun_rank
    from ..outputs import check_names
    from ..pipeline import decode_file
    from ..signals import Interrupted, stop_on_signals

    try:
        with stop_on_signals():  # SIGTERM/SIGHUP flush the outputs like Ctrl-C
            check_names([*(("input", i) for i in input), ("output", output), ("--json", json_path),
                         ("--weights", weights if weights != "random" else None)])
            many = is_many(input)  # several files, a folder or a glob: flashdecode.batch, into the folder -o
            rank, world = torchrun_rank()
            if not many and rank > 0:  # one input under torchrun: rank 0 decodes it, not every rank into one file
                if rank == 1:
                    print(f"note: one input is decoded by rank 0 alone; ranks 1-{world - 1} have nothing to do (give "
                          "several files or a folder to share them out)", file=sys.stderr, flush=True)
                return
            run = decode_files if many else decode_file
            run(input if many else input[0], output, model=model, weights=weights, latent_space=latent_space,
                layout=layout, key=key, raw=raw, device=device, dtype=dtype, compile=compile, batch_index=batch_index,
                fps=fps, crf=crf, codec=codec, preset=preset, stdout_format=stdout_format, quiet=quiet,
                json_path=json_path, overwrite=overwrite, scale=scale)
    except Interrupted as e:
        print(e.status, file=sys.stderr, flush=True)
        raise typer.Exit(e.exit_code) from None


@app.command()
@run_guarded
def info(
    input: str = typer.Argument(..., help="Latents: .safetensors, .npy, ComfyUI .latent, torch.save .pt/.pth, or "
                                          "'-' (stdin)."),
    key: str = typer.Option(None, "--key", help="Tensor name in a .safetensors/.latent file or a torch.save dict."),
    layout: str = typer.Option(None, "--layout", help="ncthw or ntchw (default: guess)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Format, shape, dtype, layout, raw or normalized, latent-space guess, and the frames a latent file decodes to."""
    import torch

    from ..errors import shown
    from ..latent_spaces import pixel_frames
    from ..latents_io import UNSAID, describe, open_latents

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
    why = d["raw_reason"] + ("; pass --raw if they are raw VAE latents" if d["raw_reason"] == UNSAID else "")
    values = f"raw VAE latents, decoded as --raw ({why})" if d["raw"] else f"normalized ({why})"
    rows = [
        ("input", shown(d["input"])),
        ("format", d["format"] + (f", tensor {d['key']!r}" if d["key"] is not None else "")),
        ("shape", f"{list(d['shape'])} as [B, C, T, h, w]"),
        ("dtype", d["dtype"]),
        ("layout", f"{d['layout']} ({d['layout_reason']})"),
        ("values", values),
        ("latent space", f"{d['latent_space'] or '?'} ({d['latent_space_reason']})"),
        ("decodes to", f"{pixel_frames(T)} frames of {size}" + (f" per item, {B} items" if B > 1 else "")),
        ("NaN/Inf", "none" if not bad else f"{bad} values (decode will refuse)"),
    ]
    # a file's own text: escaped, and cut (ComfyUI stores its whole workflow as JSON in 'prompt' and 'workflow');
    # sorted, since a safetensors header keeps no order
    rows += [(f"metadata.{shown(k, 60)}", shown(v, 200)) for k, v in sorted(d["metadata"].items())]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
