"""`flashdecode train` and `flashdecode eval`: make weights from real video, and judge them."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import run_guarded


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not HxW, e.g. 256x256") from None
    return h, w


@app.command(epilog="""
Recipe for a real Wan2.2 VAE on a GPU (nothing is downloaded; the VAE is a local diffusers folder or file):

  torchrun --nproc-per-node 8 -m flashdecode train /videos --teacher wan2.2 --vae /models/Wan2.2-TI2V-5B/vae \\
      --holdout /videos/val.mp4 --model xl --size 720x1280 --frames 25 --batch 1 \\
      --clips 20000 --steps 200000 --lr 2e-4 --warmup 2000 --eval-every 2000 --out runs/wan22-xl
""")
@run_guarded
def train(
    data: list[str] = typer.Argument(..., help="Video files or folders (anything PyAV reads); 'file:start-end' picks frames."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Run folder: decoder.safetensors, train_state.pt, latent cache."),
    teacher: str = typer.Option("demo", help="Teacher encoder: demo (bundled PCA codec), wan2.1 or wan2.2."),
    vae: Optional[str] = typer.Option(None, help="Local Wan VAE: a diffusers folder or a single checkpoint file."),
    model: str = typer.Option("xs", help="Variant to train: tiny, xs, s, b, l, xl."),
    size: str = typer.Option("256x256", help="Clip size HxW (multiples of 16)."),
    frames: int = typer.Option(9, help="Pixel frames per clip (4k+1)."),
    clips: int = typer.Option(256, help="Random clips encoded once by the teacher and cached."),
    batch: int = typer.Option(2, help="Clips per step per process."),
    steps: int = typer.Option(1000),
    minutes: Optional[float] = typer.Option(None, help="Stop after this much wall time."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: 1e-4 x 256/width, e.g. 1e-4 for xs, 5e-5 for s)."),
    warmup: Optional[int] = typer.Option(None, help="Warm-up steps (default: 50 per clip of the global batch, at least 100)."),
    passthrough_lr: Optional[float] = typer.Option(None, help="Learning-rate factor of embed/time_up/head (default: 0.1 with --init teacher or a checkpoint, else 1)."),
    weight_decay: float = typer.Option(0.01),
    ema: float = typer.Option(0.999, help="EMA decay of the saved weights."),
    pixel_loss: Optional[str] = typer.Option(None, help="Pixel term: l1, or mse (aims at PSNR). Default: mse with --init teacher or a checkpoint, else l1."),
    ssim_weight: Optional[float] = typer.Option(None, help="Weight of the (1 - SSIM of luma) term. Default: 0.05 with --init teacher or a checkpoint, else 0.2."),
    eval_every: int = typer.Option(200, help="Evaluate the EMA weights and save a checkpoint every N steps."),
    log_every: int = typer.Option(10, help="Log loss, PSNR and speed every N steps."),
    holdout: list[str] = typer.Option([], help="Video paths or 'path:start-end' ranges kept out of training (and evaluated)."),
    eval_data: list[str] = typer.Option([], help="Evaluation clips (default: the holdout)."),
    eval_frames: int = typer.Option(25, help="Frames of each evaluation clip (4k+1)."),
    grad_checkpoint: Optional[bool] = typer.Option(None, help="Recompute attention/MLP activations in backward (default: only for large steps)."),
    precision: str = typer.Option("auto", help="auto (bf16 autocast on CUDA and on CPUs with AMX), bf16 or fp32."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the unrolled clip (minutes of warm-up; pays on GPUs, not CPUs)."),
    init: str = typer.Option("random", help="random; teacher: start from a linear teacher's exact inverse (demo); "
                                            "or a decoder .safetensors to fine-tune."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its train_state.pt."),
    seed: int = typer.Option(0),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda if available)."),
) -> None:
    """Train a FlashDecoder for a teacher's latent space on real video (DDP under torchrun)."""
    from ..training.train import TrainConfig, train as run

    cfg = TrainConfig(data=list(data), out=str(out), teacher=teacher, vae=vae, model=model, size=parse_size(size),
                      frames=frames, clips=clips, batch=batch, steps=steps, minutes=minutes, lr=lr, warmup=warmup,
                      passthrough_lr=passthrough_lr, weight_decay=weight_decay, ema=ema, pixel_loss=pixel_loss,
                      ssim_weight=ssim_weight, eval_every=eval_every, log_every=log_every,
                      holdout=list(holdout), eval_data=list(eval_data), eval_frames=eval_frames,
                      grad_checkpoint=grad_checkpoint, precision=precision, compile=compile, init=init, resume=resume,
                      seed=seed, device=device)
    run(cfg)


@app.command("eval", epilog="""
See the difference (the bundled demo decoder and teacher; under a minute on a CPU):

  flashdecode eval samples/cockatoo_256x256_41f.mp4 --weights weights/demo-xs.safetensors --frames 41 \\
      --compare compare.mp4 --plot psnr.png
""")
@run_guarded
def evaluate_cmd(
    data: list[str] = typer.Argument(..., help="Evaluation videos or 'file:start-end' ranges."),
    weights: str = typer.Option(..., help="Decoder checkpoint (.safetensors) or 'random'."),
    model: Optional[str] = typer.Option(None, help="Variant (default: from the checkpoint)."),
    teacher: str = typer.Option("demo", help="Teacher encoder that makes the latents: demo, wan2.1, wan2.2."),
    vae: Optional[str] = typer.Option(None, help="Local Wan VAE path (for wan2.1/wan2.2 teachers)."),
    size: str = typer.Option("256x256", help="Evaluation size HxW (center crop + resize)."),
    frames: int = typer.Option(25, help="Frames per clip (4k+1)."),
    device: Optional[str] = typer.Option(None),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON (with per-frame PSNR)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="Side-by-side video (.mp4/.mkv/.mov/.webm): ground "
                                           "truth | decoded | the teacher's decoder | error heat map, clip after clip."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Per-frame PSNR chart of every decoder evaluated "
                                            "(.png/.svg/.pdf; needs matplotlib)."),
    fps: Optional[float] = typer.Option(None, help="Frame rate of the --compare video (default: the first video's)."),
) -> None:
    """PSNR/SSIM of decoded video against the ground truth, beside the teacher's own decoder."""
    from contextlib import nullcontext

    from rich.console import Console
    from rich.table import Table

    import itertools

    from ..engine import load_decoder
    from ..errors import FlashdecodeError, shown
    from ..memory import check_host_memory
    from ..engine import resolve_device
    from ..outputs import check_distinct
    from ..pipeline import check_json_path
    from ..training.compare import ComparisonWriter, HEAT_FULL_SCALE, check_compare_path, check_plot_path, plot_psnr
    from ..training.evaluate import evaluate
    from ..training.teachers import load_teacher
    from ..training.video_data import eval_clips, list_videos, parse_source, probe
    from ..video_io import check_fps
    from .common import check_frames, parse_hw

    hw = parse_hw(size)  # every option is checked before a video is read or a model is loaded
    check_frames(frames)
    dev = resolve_device(device)
    if json_out is not None:
        check_json_path(json_out)
    if compare is not None:
        check_compare_path(compare)
    if plot_out is not None:
        check_plot_path(plot_out)
    if fps is not None:
        check_fps(fps)
    check_distinct([("input", parse_source(d)[0]) for d in data],  # no output overwrites an input or another output
                   [("--json", json_out), ("--compare", compare), ("--plot", plot_out)])
    # a clip, its teacher round trip and its decode are held whole, as float32: refuse what cannot fit
    check_host_memory(3 * 3 * 4 * frames * hw[0] * hw[1], f"evaluating {frames}-frame clips at {size}",
                      "pass a smaller --size or fewer --frames")
    clips = eval_clips(data, frames=frames, size=hw)
    first = next(clips, None)
    if first is None:
        raise FlashdecodeError(f"nothing to evaluate: no range of {', '.join(data)} has {frames} frames; "
                               "pass fewer --frames or a longer range")
    tch = load_teacher(teacher, vae, device=dev)
    decoder = load_decoder(model, tch.latent_space.name, weights=weights, device=dev)
    baseline = "PCA inverse" if teacher == "demo" else f"{teacher} conv decoder"
    panels = ["ground truth", f"{decoder.name} decoded", *([baseline] if hasattr(tch, "decode") else []),
              f"error heat map (white = {round(HEAT_FULL_SCALE * 255)}/255)"]
    if compare is not None and fps is None:  # the first input's frame rate (16, Wan's, if it has none)
        fps = probe(list_videos(data[0])[0]).fps or 16.0  # list_videos strips a range, raises when it finds none
    with ComparisonWriter(compare, fps, panels) if compare is not None else nullcontext() as cmp:
        rows = evaluate(decoder, itertools.chain([first], clips), tch, compare=cmp)
    if compare is not None:
        print(f"wrote {shown(compare)}: {cmp.frames_written} frames, {' | '.join(panels)}", file=sys.stderr)
    title = f"{decoder.name} ({'random weights' if decoder.random_weights else weights}) vs {baseline}, {size}"
    table = Table(title=title)
    for col in ("clip", "frames", "PSNR dB", "SSIM", f"{baseline} PSNR", f"{baseline} SSIM"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["clip"], str(r["frames"]), f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                      f"{r.get('teacher_psnr', float('nan')):.2f}", f"{r.get('teacher_ssim', float('nan')):.4f}")
    Console().print(table)
    if json_out:
        try:  # the table is already printed: a failed write is one line, not a traceback over it
            json_out.write_text(json.dumps({"weights": str(weights), "teacher": teacher, "rows": rows}, indent=2))
        except OSError as e:
            raise FlashdecodeError(f"cannot write --json {json_out}: {e.strerror or e}") from None
    if plot_out is not None:
        plot_psnr(rows, {"psnr_per_frame": decoder.name, "teacher_psnr_per_frame": baseline}, plot_out, title)
        print(f"wrote {shown(plot_out)}", file=sys.stderr)
