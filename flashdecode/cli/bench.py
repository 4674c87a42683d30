"""`flashdecode bench`: speed and memory of FlashDecoder variants beside the Wan conv and tiny decoders."""
from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import run_guarded


@app.command()
@run_guarded
def bench(
    res: str = typer.Option("480p", "--res", help="480p, 720p, 1080p (1088x1920) or HxW in pixels (multiples of "
                                                  "16); a comma list runs each"),
    model: str = typer.Option("s", "--model", help="FlashDecoder variants, comma list: tiny, xs, s, b, l, xl"),
    frames: int = typer.Option(25, "--frames", help="pixel frames per clip, 4k+1 (25 = 7 latent frames)"),
    lengths: str = typer.Option(None, "--lengths", help="latent frame counts, comma list (e.g. 10,100,1000): "
                                                        "memory and ms/frame against video length; replaces --frames"),
    baseline: str = typer.Option("none", "--baseline", help="decoders to run beside, comma list: wan2.1, wan2.2 (the "
                                                            "Wan conv VAE decoder: diffusers' vae.decode and the same "
                                                            "decoder streamed), taehv (the tiny decoder of "
                                                            "--latent-space), or none"),
    latent_space: str = typer.Option("wan2.2", "--latent-space", help="latent space of the FlashDecoder rows"),
    device: str = typer.Option(None, "--device", help="cuda or cpu (default: cuda if available)"),
    dtype: str = typer.Option(None, "--dtype", help="bf16, fp16, fp32 or fp8 (FlashDecoder rows; baselines run in "
                                                    "the others), comma list runs each (default: bf16 on cuda, fp32 "
                                                    "on cpu)"),
    compile: str = typer.Option("auto", "--compile", help="FlashDecoder rows: auto (load_decoder's measured "
                                                          "default), on or off; comma list runs each (e.g. off,on)"),
    output: str = typer.Option(None, "--output", help="mp4 or raw: also decode each FlashDecoder clip through "
                                                      "flashdecode.decode_file into a real .mp4 file (raw: rgb24 "
                                                      "to /dev/null) and report e2e_fps beside FPS"),
    warmup: int = typer.Option(1, "--warmup", help="warm-up decodes of a short clip before timing"),
    repeat: int = typer.Option(3, "--repeat", help="timed decodes of the whole clip; medians are reported"),
    budget_s: float = typer.Option(120.0, "--budget-s", help="per case: stop repeating once another run would pass "
                                                             "this many seconds; skip lengths estimated to pass it"),
    timeout: float = typer.Option(3600.0, "--timeout", help="per case: kill its process after this many seconds"),
    threads: int = typer.Option(None, "--threads", help="CPU threads per case (default: torch's, one per core)"),
    weights: str = typer.Option("random", "--weights", help="FlashDecoder weights: random, or a .safetensors path "
                                                            "(one --model)"),
    json_path: Path = typer.Option(None, "--json", help="write {machine, rows} here (updated after every case)"),
    plot_path: Path = typer.Option(None, "--plot", help="FPS and memory chart (.png; needs matplotlib)"),
    baseline_size: str = typer.Option("full", "--baseline-size", hidden=True, help="tiny: narrow baselines (tests)"),
) -> None:
    """Measure FPS, ms per latent frame, time to first frame, peak memory and FLOPs, each case in its own process.

    Exits 2 with one error line when no case could be measured (every one failed or was skipped)."""
    from rich.console import Console

    from .. import bench as harness
    from ..engine import resolve_device
    from ..errors import FlashdecodeError
    from ..latent_spaces import get_latent_space, latent_frames
    from ..pipeline import check_json_path

    models = [m.lower() for m in harness.parse_list(model)]
    baselines = [b.lower() for b in harness.parse_list(baseline) if b.lower() != "none"]
    try:
        get_latent_space(latent_space)
    except ValueError as e:
        raise FlashdecodeError(f"--latent-space: {e}") from None
    if lengths is not None:
        counts = harness.parse_int_list(lengths, "--lengths")
    else:
        try:
            counts = [latent_frames(frames)]
        except ValueError as e:
            raise FlashdecodeError(f"--frames {frames}: {e}") from None
    for name, value, least in (("--warmup", warmup, 0), ("--repeat", repeat, 1), ("--threads", threads, 1)):
        if value is not None and value < least:
            raise FlashdecodeError(f"{name} must be at least {least}, got {value}")
    for name, value in (("--budget-s", budget_s), ("--timeout", timeout)):
        if not value > 0:  # also refuses nan
            raise FlashdecodeError(f"{name} must be a positive number of seconds, got {value}")
    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise FlashdecodeError(f"--device {device}: bench runs on cpu or cuda")
    dtypes = harness.parse_dtypes(dtype, dev.type)
    compiles = harness.parse_choices(compile, "--compile", harness.COMPILE_MODES)
    if output is not None:
        output = harness.parse_choices(output, "--output", harness.OUTPUTS)
        if len(output) > 1:
            raise FlashdecodeError("--output takes one of mp4, raw (run bench once for each)")
        output = output[0]
    if weights != "random" and len(models) > 1:
        raise FlashdecodeError("--weights PATH fits one --model; pass a single variant or --weights random")
    if weights != "random":
        from ..checkpoint import check_weights_path

        check_weights_path(weights)
    if json_path:
        check_json_path(json_path)  # before the cases run, not after: a folder or a missing parent is one line
    if plot_path:
        harness.check_plot_dependency()
    harness.check_baseline_dependency(baselines)
    cases = harness.build_cases(harness.parse_list(res), models, baselines, counts, dtypes=dtypes, compiles=compiles,
                                latent_space=latent_space, device=dev.type, output=output, warmup=warmup,
                                repeat=repeat, budget_s=budget_s, weights=weights, baseline_size=baseline_size,
                                threads=threads)

    err = Console(stderr=True)
    rows = harness.Bench(cases, timeout=timeout, json_path=json_path).run(progress=lambda m: err.print(m, highlight=False, soft_wrap=True))
    out = Console()
    if not out.is_terminal:  # a file or a pipe: do not squeeze the table into 80 columns
        out = Console(width=200)
    out.print(harness.render_table(rows))
    if json_path:
        err.print(f"wrote {json_path}")
    if plot_path and any(r.get("fps") for r in rows):
        harness.plot(rows, plot_path)
        err.print(f"wrote {plot_path}")
    if not any(r.get("fps") for r in rows):
        first = next((r.get("error") or r.get("skipped") for r in rows), "no case ran")
        raise FlashdecodeError(f"no case could be measured: all {len(rows)} failed or were skipped (first: {first})")
