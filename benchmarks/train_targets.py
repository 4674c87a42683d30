"""Issue 12's training targets, met or not, from one `benchmarks/gpu_train.sh` run.

    python benchmarks/train_targets.py RESULTS_DIR [--json train_targets.json] [--peak-tflops X] [--strict]

Reads RESULTS_DIR/<run>/summary.json (`flashdecode train`), run.json (its arguments) and train.log (its log
lines) for the runs speed, util, never-worse and demo, and the float16 RESULTS_DIR/demo-*.safetensors, and
prints one line per target: the threshold, the measured value, met / NOT MET / not measured, and where the
number comes from.

- Speed: the training rate after the first log window (whose first step holds the one-time warm-up: cuBLAS,
  the allocator, the loader's workers), from the log lines; summary.json's steps_per_second (every step) is
  beside it. A run without a summary (killed) is read from its log alone.
- Utilisation: model TFLOP/s = that rate x `flashdecode.training.train.step_flops` (the bench's forward count
  x3), against the card's peak MEASURED here: a bf16 8192^3 matmul timed with CUDA events (on a CPU: a float32
  or bf16 1024^3 matmul, whichever the run trained in). The peak is kept in RESULTS_DIR/peak.json, so running
  this again elsewhere (on the results, without the card) reuses it; `--peak-tflops` overrides it.
- Never worse: every held-out evaluation >= the start (step 0) - 0.05 dB, and nothing diverges (every logged
  loss and evaluation finite, the last logged loss at most 2x the first).
- Demo retrain: the float16 copy's held-out PSNR must beat the bundled weights/demo-xs.safetensors (same clip,
  size and frames; equal means the run kept its start), or the PCA inverse when the clip differs.
`--strict` exits 1 when a measured target is not met (gpu_train.sh does not use it: it only reports).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))  # flashdecode from this tree when it is not installed
from targets import result  # noqa: E402  (same result rows as issue 9's targets.py)

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "weights" / "demo-xs.safetensors"
WINDOW = re.compile(r"step (\d+)/\d+\s+loss (\S+)\s+train PSNR \S+ dB\s+(\S+) steps/s")
EVAL = re.compile(r"eval @ (\d+): PSNR (\S+) dB")
SPEED_MIN, UTIL_MIN, DROP_MAX, DIVERGE = 15.0, 0.35, 0.05, 2.0
DEMO_TARGET_DB = 32.5  # issue 12: the bundled demo decoder on the held-out cockatoo frames at 256x256


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def load_run(folder: Path, name: str) -> dict | None:
    """summary.json, run.json and the log's windows/evals of one run; None when the run left nothing."""
    d = folder / name
    if not d.is_dir():
        return None
    run = {"name": name, "summary": None, "config": {}, "windows": [], "evals": []}
    for key, file in (("summary", "summary.json"), ("config", "run.json")):
        try:
            run[key] = json.loads((d / file).read_text())
        except (OSError, json.JSONDecodeError):
            pass
    try:
        log = (d / "train.log").read_text(errors="replace")
    except OSError:
        log = ""
    last = 0
    for m in WINDOW.finditer(log):  # (steps in the window, its steps/s, its mean loss)
        step = int(m.group(1))
        run["windows"].append((step - last, _float(m.group(3)), _float(m.group(2))))
        last = step
    run["evals"] = [{"step": int(m.group(1)), "psnr": _float(m.group(2))} for m in EVAL.finditer(log)]
    return run


def option(run: dict, flag: str, default: str | None = None) -> str | None:
    """The value of a `train` option in run.json's argv (the last one wins, as on the command line)."""
    argv = run["config"].get("argv", [])
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    return values[-1] if values else default


def rates(run: dict) -> tuple[float | None, float | None, str]:
    """(steady steps/s after the first log window, summary's steps/s over every step, a description)."""
    later = [(n, r) for n, r, _ in run["windows"][1:] if n > 0 and r > 0 and math.isfinite(r)]
    steady = sum(n for n, _ in later) / sum(n / r for n, r in later) if later else None
    overall = (run["summary"] or {}).get("steps_per_second")
    steps = (run["summary"] or {}).get("steps") or sum(n for n, _, _ in run["windows"])
    windows = f"{len(later)} log window{'' if len(later) == 1 else 's'}"
    parts = [f"{steady:.2f} steps/s over steps {run['windows'][0][0] + 1}-{steps} ({windows})"
             if steady else "fewer than 2 log windows"]
    parts.append(f"summary.json {overall:.2f} steps/s over all {steps} steps (warm-up included)" if overall
                 else "no summary.json" + (f" (exit {run['config']['exit_code']})" if "exit_code" in run["config"] else ""))
    return steady, overall, "; ".join(parts)


def shape(run: dict) -> str:
    size, batch, frames = option(run, "--size", "256x256"), option(run, "--batch", "2"), option(run, "--frames", "9")
    return f"{option(run, '--model', 'xs').upper()}, {size}, {frames} frames, batch {batch}"


def flops_per_step(run: dict) -> float:
    from flashdecode.model import ModelConfig
    from flashdecode.training.train import step_flops

    h, w = (int(v) for v in option(run, "--size", "256x256").lower().split("x"))
    c = ModelConfig.build(option(run, "--model", "xs"), "demo")  # every run here trains for the demo teacher
    latent_frames = 1 + (int(option(run, "--frames", "9")) - 1) // 4
    return step_flops(c, int(option(run, "--batch", "2")), latent_frames, h // c.pixel_patch, w // c.pixel_patch)


def measure_peak(device: str, precision: str) -> dict:
    """Matmul TFLOP/s of this machine: bf16 8192^3 with CUDA events on a GPU; 1024^3 on a CPU."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cuda = device.startswith("cuda")
    n, reps = (8192, 50) if cuda else (1024, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(10 if cuda else 2):  # clocks up, cuBLAS picks its kernel
        a @ b
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
        name = torch.cuda.get_device_name()
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        seconds = time.perf_counter() - t0
        name = "cpu"
    return {"tflops": 2 * n**3 * reps / seconds / 1e12, "dtype": str(dtype).replace("torch.", ""), "n": n,
            "repeats": reps, "device_name": name, "torch": torch.__version__, "how": "CUDA events" if cuda else "perf_counter"}


def peak_for(folder: Path, run: dict | None, given: float | None) -> dict | None:
    if given:
        return {"tflops": given, "how": "--peak-tflops"}
    path = folder / "peak.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        pass
    if not run:
        return None
    device = run["config"].get("device", "cuda")
    precision = (run["summary"] or {}).get("precision", "bf16" if device.startswith("cuda") else "fp32")
    try:
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            return None
        peak = measure_peak(device, precision)
    except Exception as e:  # noqa: BLE001  (a summary line, not a traceback)
        print(f"peak not measured: {e}", file=sys.stderr)
        return None
    path.write_text(json.dumps(peak, indent=1) + "\n")
    return peak


def quality(path: Path) -> dict | None:
    try:
        from flashdecode.checkpoint import read_metadata

        return read_metadata(path)["provenance"]["quality_held_out"]
    except Exception:  # noqa: BLE001  (missing, unreadable or not bundled: no quality)
        return None


def evaluate(folder: Path, peak_tflops: float | None = None) -> tuple[list[dict], dict | None]:
    runs = {name: load_run(folder, name) for name in ("speed", "util", "never-worse", "demo")}
    out = []

    run = runs["speed"]
    name = f"training speed ({shape(run) if run else 'S, 256x256, 9 frames, batch 8'})"
    steady, overall, detail = rates(run) if run else (None, None, "not run")
    value = steady or overall
    out.append(result(name, f">= {SPEED_MIN:g} steps/s", f"{value:.2f}" if value else None,
                      value >= SPEED_MIN if value else None, detail))

    run = runs["util"]
    peak = peak_for(folder, run, peak_tflops)
    name = f"training utilisation ({shape(run) if run else 'S, 480x832, 9 frames, batch 2'}), of the measured peak"
    steady, overall, detail = rates(run) if run else (None, None, "not run")
    value = steady or overall
    if not value or not peak:
        out.append(result(name, f">= {UTIL_MIN:.0%}", None, None,
                          detail + ("" if peak else "; no peak (no GPU here and no peak.json)")))
    else:
        tflops = value * flops_per_step(run) / 1e12
        share = tflops / peak["tflops"]
        how = (f"{peak.get('dtype', '')} {peak.get('n', '')}^3 matmul, {peak.get('how')}" if "n" in peak
               else peak.get("how", ""))
        out.append(result(name, f">= {UTIL_MIN:.0%}", f"{share:.1%}", share >= UTIL_MIN,
                          f"{value:.2f} steps/s x {flops_per_step(run) / 1e12:.3g} TFLOP/step = {tflops:.3g} TFLOP/s "
                          f"of {peak['tflops']:.3g} TFLOP/s peak ({how}); {detail}"))

    run = runs["never-worse"]
    name = f"never worse ({shape(run) if run else 'S, 512x512, batch 8'}, default lr/warm-up/loss, --init teacher)"
    evals = (run["summary"] or {}).get("evals") or run["evals"] if run else []
    if len(evals) < 2:
        out.append(result(name, f">= start - {DROP_MAX} dB", None, None,
                          f"{len(evals)} evaluation(s): need the start and one after training" if run else "not run"))
    else:
        start = evals[0]["psnr"]
        worst = min(e["psnr"] for e in evals[1:])
        losses = [loss for _, _, loss in run["windows"]]
        s = run["summary"] or {}
        losses += [v for v in (s.get("train_loss_first"), s.get("train_loss_last")) if v is not None]
        finite = all(math.isfinite(v) for v in losses + [e["psnr"] for e in evals])
        grew = bool(losses) and finite and losses[-1] > DIVERGE * losses[0]
        first_loss = run["windows"][0][2] if run["windows"] else s.get("train_loss_first")
        last_loss = run["windows"][-1][2] if run["windows"] else s.get("train_loss_last")
        drop = worst - start
        out.append(result(name, f">= start - {DROP_MAX} dB", f"{drop:+.3f} dB" if math.isfinite(drop) else "nan",
                          drop >= -DROP_MAX and finite and not grew,
                          "evals " + ", ".join(f"@{e['step']} {e['psnr']:.3f}" for e in evals) + " dB; "
                          + ("a loss or an eval is not finite: diverged" if not finite else
                             f"loss grew {losses[-1] / losses[0]:.1f}x: diverged" if grew else
                             f"train loss {first_loss:.4g} -> {last_loss:.4g}" if first_loss is not None else "no losses")))

    run = runs["demo"]
    files = sorted(p for p in folder.glob("demo-*.safetensors") if ".tmp" not in p.name)
    name = "demo decoder retrained: held-out PSNR of its float16 copy"
    new = quality(files[0]) if files else None
    if not new:
        out.append(result(name, "> bundled", None, None, "no bundled copy in the results" if run else "not run"))
    else:
        old = quality(BUNDLED)
        same = old and all(old.get(k) == new.get(k) for k in ("clip", "size", "frames"))
        ref, what = (old["psnr"], f"bundled {BUNDLED.name}") if same else (new["pca_inverse_psnr"], "PCA inverse")
        s = (run or {}).get("summary") or {}
        trained = (f"{s['steps']} steps in {s['train_seconds']:.0f} s ({s['steps_per_second']:.1f} steps/s)"
                   if s.get("steps_per_second") else "no summary.json")
        # better, not equal: the run keeps its best evaluation, which is the start (the bundled weights) when
        # training did not beat it; the stored PSNRs are rounded to 3 decimals
        out.append(result(name, f"> {ref:.3f} dB", f"{new['psnr']:.3f} dB", new["psnr"] > ref + 0.0005,
                          f"{files[0].name}: {new['clip']} {new['size']} {new['frames']} frames, SSIM {new['ssim']}; "
                          f"{what} {ref:.3f} dB" + (f" (PCA inverse {new['pca_inverse_psnr']:.2f})" if same else "")
                          + f"; {trained}"))
        out.append(result("demo decoder: held-out PSNR at 256x256 (issue 12)", f">= {DEMO_TARGET_DB} dB",
                          f"{new['psnr']:.3f} dB", new["psnr"] >= DEMO_TARGET_DB if new["size"] == "256x256" else None,
                          f"{new['clip']} {new['size']} {new['frames']} frames"))
    return out, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="the folder gpu_train.sh wrote")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--peak-tflops", type=float, help="the card's bf16 peak, instead of measuring it / peak.json")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a measured target is not met")
    args = ap.parse_args()
    if not args.results.is_dir():
        print(f"error: {args.results} is not a folder", file=sys.stderr)
        return 2

    results, peak = evaluate(args.results, args.peak_tflops)
    card = (peak or {}).get("device_name") or "unknown device"
    print(f"issue 12 training targets, {card}, torch {(peak or {}).get('torch', '?')}, teacher demo ({args.results})")
    width = max(len(r["target"]) for r in results)
    for r in results:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[r["met"]]
        print(f"  {r['target']:<{width}}  {r['threshold']:>16}  {r['measured'] or '-':>10}  {verdict:<12}  {r['detail']}")
    if args.json:
        args.json.write_text(json.dumps({"peak": peak, "targets": results}, indent=2) + "\n")
    return 1 if args.strict and any(r["met"] is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
