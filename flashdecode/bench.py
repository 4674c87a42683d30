"""Benchmark harness: FlashDecoder variants against the Wan conv decoders, measured side by side.

Each case (one decoder x resolution x length) runs in a fresh `python -m flashdecode.bench --case JSON`
process, so imports, the allocator and CUDA's caching pool never carry over from one case to the next.
Inside a case: load the decoder, warm up on a short clip, then time `--repeat` decodes of the whole clip
and keep the medians. FlashDecoder streams, consuming and dropping each pixel chunk as `decode` does;
a baseline decodes the way diffusers' Wan pipelines do (everything at once, see wan_vae.py).

End to end (`output="mp4"` or `"raw"`): after the decode-only runs, the same clip goes through the library's
whole path, `flashdecode.decode_file` with the same decoder (read a latent file -> decode -> convert -> encode
into a real MP4 file, or raw rgb24 to /dev/null), so `e2e_fps` and `fps` are measured side by side, warm.

Memory. CUDA: `max_memory_allocated` (and `_reserved`), reset before each timed run, the largest kept. CPU: the
case's peak resident set (VmHWM), reset likewise, with `MALLOC_MMAP_THRESHOLD_=262144` so glibc returns big
buffers at once instead of keeping a moving heap (docs/design.md section 7); the RSS just before the timed runs
is reported too, so weights and activations can be told apart.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import FlashdecodeError
from .latent_spaces import pixel_frames

RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280), "1080p": (1088, 1920)}
BASELINES = ("wan2.1", "wan2.2")
ROW_MARK = "FLASHDECODE_BENCH_ROW "  # prefixes the one line of a case process's stdout that holds its row
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "262144", "PYTHONUNBUFFERED": "1"}
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "fp16": "float16", "float16": "float16", "fp8": "fp8"}
COMPILE_MODES = {"auto": None, "on": True, "off": False}  # -> load_decoder(compile=...); None: its measured default
OUTPUTS = ("mp4", "raw")  # end-to-end rows: decode_file into an .mp4 file, or raw rgb24 to /dev/null
E2E_MAX_FILE_BYTES = 2e9  # the end-to-end run reads a latent file written first: bound its size on disk


@dataclass
class Case:
    """One measurement: what to decode, where, and how many times."""

    kind: str  # "flashdecode" or "baseline"
    model: str  # flashdecode variant ("s") or baseline name ("wan2.2")
    res: str  # label: "720p" or "256x256"
    height: int
    width: int
    latent_frames: int
    latent_space: str = "wan2.2"  # flashdecode only; a baseline decodes its own space
    device: str = "cpu"
    dtype: str = "float32"  # a DTYPE_NAMES value: float32, bfloat16, float16 or fp8
    compile: str = "off"  # a COMPILE_MODES key (flashdecode only)
    output: str | None = None  # an OUTPUTS value: also measure end to end (flashdecode only)
    warmup: int = 1
    repeat: int = 3
    budget_s: float = 120.0  # stop repeating once another run would pass this (at least one run)
    weights: str = "random"
    baseline_size: str = "full"  # "tiny": a narrow baseline, for tests of the harness
    threads: int | None = None  # CPU threads (torch.set_num_threads); None: torch's default

    @property
    def decoder(self) -> str:
        return f"flashdecode-{self.model}" if self.kind == "flashdecode" else f"{self.model}-conv"


# -- parsing ------------------------------------------------------------------------------------------


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_int_list(text: str, option: str) -> list[int]:
    """'10,100,1000' -> [10, 100, 1000], or one line that names the option and the bad item."""
    values = []
    for item in parse_list(text):
        try:
            values.append(int(item))
        except ValueError:
            raise FlashdecodeError(f"{option} takes whole numbers separated by commas (e.g. 10,100,1000); "
                                   f"{item!r} is not one") from None
    if not values:
        raise FlashdecodeError(f"{option} is empty; give whole numbers separated by commas (e.g. 10,100,1000)")
    return values


def parse_choices(text: str, option: str, choices) -> list[str]:
    """A comma list of names from `choices` (case-insensitive), in order, without repeats."""
    values = list(dict.fromkeys(v.lower() for v in parse_list(text)))
    for v in values:
        if v not in choices:
            raise FlashdecodeError(f"{option}: {v!r} is not one of {', '.join(choices)}")
    if not values:
        raise FlashdecodeError(f"{option} is empty; choose from {', '.join(choices)}")
    return values


def parse_dtypes(text: str | None, device: str) -> list[str]:
    """--dtype (a comma list) -> canonical names; default bfloat16 on cuda, float32 on cpu."""
    if text is None:
        return ["bfloat16" if device == "cuda" else "float32"]
    return list(dict.fromkeys(DTYPE_NAMES[d] for d in parse_choices(text, "--dtype", DTYPE_NAMES)))


def parse_resolution(text: str) -> tuple[str, int, int]:
    """'720p' or 'HxW' (pixels, multiples of 16) -> (label, height, width)."""
    text = text.strip().lower()
    if text in RESOLUTIONS:
        return (text, *RESOLUTIONS[text])
    try:
        height, width = (int(v) for v in text.split("x"))
    except ValueError:
        raise FlashdecodeError(f"resolution {text!r} is not {', '.join(RESOLUTIONS)} or HxW (e.g. 256x256)") from None
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise FlashdecodeError(f"resolution {height}x{width} must be positive multiples of 16 (one token is 16x16 "
                               "pixels); e.g. 1088x1920 for 1080p")
    return f"{height}x{width}", height, width


def build_cases(resolutions: list[str], models: list[str], baselines: list[str], lengths: list[int],
                dtypes: list[str] = ("float32",), compiles: list[str] = ("off",), **common) -> list[Case]:
    """Every (resolution, length, decoder, dtype, compile mode), baselines first so a failing baseline shows
    early. Baselines run once per dtype they support (not fp8, not compiled; fp8 alone: the device's default)."""
    from .model import VARIANTS

    for m in models:
        if m not in VARIANTS:
            raise FlashdecodeError(f"unknown model {m!r}; choose from {', '.join(VARIANTS)}")
    for b in baselines:
        if b not in BASELINES:
            raise FlashdecodeError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)} or none")
    if not models and not baselines:
        raise FlashdecodeError("nothing to measure; pass --model and/or --baseline")
    if not resolutions:
        raise FlashdecodeError("no resolution to measure; pass --res, e.g. 720p or 256x256")
    if any(n < 1 for n in lengths):
        raise FlashdecodeError(f"--lengths: latent frame counts must be at least 1, got {min(lengths)}")
    for d in dtypes:
        if d not in DTYPE_NAMES.values():
            raise FlashdecodeError(f"unknown dtype {d!r}; choose from {', '.join(DTYPE_NAMES)}")
    for c in compiles:
        if c not in COMPILE_MODES:
            raise FlashdecodeError(f"unknown compile mode {c!r}; choose from {', '.join(COMPILE_MODES)}")
    if common.get("output") not in (None, *OUTPUTS):
        raise FlashdecodeError(f"unknown output {common['output']!r}; choose from {', '.join(OUTPUTS)}")
    fallback = "bfloat16" if common.get("device") == "cuda" else "float32"
    baseline_dtypes = [d for d in dtypes if d != "fp8"] or [fallback]
    baseline_common = {k: v for k, v in common.items() if k != "output"}
    cases = []
    for res in resolutions:
        label, height, width = parse_resolution(res)
        for n in sorted(set(lengths)):
            cases += [Case("baseline", name, label, height, width, n, dtype=d, **baseline_common)
                      for d in baseline_dtypes for name in baselines]
            cases += [Case("flashdecode", name, label, height, width, n, dtype=d, compile=c, **common)
                      for name in models for d in dtypes for c in compiles]
    return cases


# -- inside a case process -----------------------------------------------------------------------------


class Clock:
    """Marks on the device's own timeline: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks = []

    def mark(self, *_) -> None:  # *_: also usable as a forward hook
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def ms(self) -> list[float]:
        """Each mark in ms since the first (waits for the GPU)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return [self.marks[0].elapsed_time(e) for e in self.marks]
        return [(t - self.marks[0]) * 1e3 for t in self.marks]


class MemoryProbe:
    """Peak memory of what runs between `start` and `stop`; see the module docstring."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            self.method = "cuda max_memory_allocated"
        else:
            self.before = _proc_status_bytes("VmRSS")
            try:  # Linux >= 4.0: writing 5 resets the peak RSS (VmHWM) to the current RSS
                Path("/proc/self/clear_refs").write_text("5")
                self.method = "peak RSS (VmHWM) during the timed runs"
            except OSError:
                self.method = "peak RSS of the whole case process (ru_maxrss; could not reset VmHWM)"

    def stop(self) -> dict:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return dict(peak_mem_bytes=torch.cuda.max_memory_allocated(), mem_before_bytes=self.before,
                        peak_reserved_bytes=torch.cuda.max_memory_reserved(), mem_method=self.method)
        if self.method.startswith("peak RSS (VmHWM)"):
            peak = _proc_status_bytes("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return dict(peak_mem_bytes=peak, mem_before_bytes=self.before, peak_reserved_bytes=None,
                    mem_method=self.method)


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def _load(case: Case, device):
    """-> (decoder, its latent space, latent grid (h, w), FLOPs of the whole clip, how they were counted)."""
    if case.kind == "baseline":
        from .wan_vae import load_baseline
        from .engine import resolve_dtype

        base = load_baseline(case.model, device, resolve_dtype(case.dtype, device), size=case.baseline_size)
        h, w = base.latent_grid(case.height, case.width)
        flops = base.flops(case.height, case.width, case.latent_frames)
        return base, base.latent_space, (h, w), flops, "FlopCounterMode (meta device)"
    from .engine import load_decoder
    from .memory import check_memory
    from .model import flops_per_clip

    dec = load_decoder(case.model, case.latent_space, weights=case.weights, device=device, dtype=case.dtype,
                       compile=COMPILE_MODES[case.compile])
    s = dec.latent_space.spatial
    if case.height % s or case.width % s:
        raise FlashdecodeError(f"{case.height}x{case.width} is not a multiple of {s} pixels per latent cell")
    h, w = case.height // s, case.width // s
    check_memory(dec, 1, h, w)  # a huge --res is one line here, not an allocation attempt in the first step
    p = dec.config.patch
    flops = flops_per_clip(dec.config, h // p, w // p, case.latent_frames)
    return dec, dec.latent_space, (h, w), flops, "analytic (model.flops_per_clip)"


def _decode_streaming(decoder, pool, n: int, clock: Clock) -> None:
    """Stream n latent frames (cycling a small pool, so the input does not grow with n); drop each chunk."""
    frames = (pool[:, :, i % pool.shape[2]] for i in range(n))
    clock.mark()
    for chunk in decoder.stream(frames):
        clock.mark()
        del chunk


def _decode_baseline(baseline, pool, n: int, clock: Clock) -> list[float]:
    """One diffusers decode of n latent frames; the per-frame marks come from hooks on its frame loop."""
    import torch

    latents = pool[:, :, torch.arange(n) % pool.shape[2]]
    frame_clock = Clock(baseline.device)
    hooks = [baseline.vae.decoder.register_forward_pre_hook(frame_clock.mark),
             baseline.vae.decoder.register_forward_hook(frame_clock.mark)]
    try:
        clock.mark()
        out = baseline.decode_with_diffusers(latents)
        clock.mark()
        del out
    finally:
        for hook in hooks:
            hook.remove()
    marks = frame_clock.ms()
    return [b - a for a, b in zip(marks[0::2], marks[1::2])]


def run_case(case: Case) -> dict:
    """Measure one case in this process; returns its row."""
    import numpy as np
    import torch

    if case.threads:
        torch.set_num_threads(case.threads)
    device = torch.device(case.device)
    decoder, space, (h, w), flops, flops_method = _load(case, device)
    n = case.latent_frames
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(1, space.channels, min(n, 4), h, w, generator=gen).to(device)  # normalized latents

    def decode(frames: int):
        clock = Clock(device)
        if case.kind == "baseline":
            frame_ms = _decode_baseline(decoder, pool, frames, clock)
            total = clock.ms()[-1]
            return total, total, frame_ms  # diffusers returns the clip only when all of it is decoded
        _decode_streaming(decoder, pool, frames, clock)
        marks = clock.ms()
        return marks[-1], marks[1], [b - a for a, b in zip(marks, marks[1:])]

    e2e = EndToEnd(case, decoder, pool) if case.kind == "flashdecode" and case.output else None
    for _ in range(case.warmup):  # a short clip reaches every shape: first frame, filling and full window
        decode(min(n, 3 if case.kind == "flashdecode" else 2))
        if e2e:
            e2e.run(min(n, 3), timed=False)
    # Each timed decode-only run is followed by its end-to-end run (if any): on a machine whose load drifts,
    # both see the same conditions. Memory is probed around the decode-only runs alone.
    probe = MemoryProbe(device)
    runs, peaks, started = [], [], time.perf_counter()
    for _ in range(max(case.repeat, 1)):
        probe.start()
        runs.append(decode(n))
        peaks.append(probe.stop())
        if e2e:
            e2e.run(n)
        spent = time.perf_counter() - started
        if spent + spent / len(runs) > case.budget_s:
            break
    memory = dict(max(peaks, key=lambda m: m["peak_mem_bytes"]), mem_before_bytes=peaks[0]["mem_before_bytes"])

    totals = [r[0] for r in runs]
    frame_ms = [t for r in runs for t in r[2]]
    total_ms = statistics.median(totals)
    frames = pixel_frames(n)
    row = dict(
        decoder=case.decoder, kind=case.kind, model=case.model, res=case.res, height=case.height, width=case.width,
        frames=frames, latent_frames=n, latent_space=space.name, device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        threads=torch.get_num_threads(), dtype=case.dtype, model_dtype=str(decoder.dtype).removeprefix("torch."),
        compile=case.compile if case.kind == "flashdecode" else "off",
        compiled=getattr(decoder.model, "compiled_frame", None) is not None if case.kind == "flashdecode" else False,
        random_weights=bool(decoder.random_weights), params=decoder.num_parameters(),
        fps=frames / (total_ms / 1e3), total_ms=total_ms, ttff_ms=statistics.median(r[1] for r in runs),
        ms_per_latent_frame=statistics.median(frame_ms), ms_per_latent_frame_p90=float(np.percentile(frame_ms, 90)),
        flops_per_frame=flops / frames, flops_method=flops_method, tflops_per_s=flops / (total_ms / 1e3) / 1e12,
        **memory, warmup=case.warmup, runs=len(runs),
    )
    if e2e:
        row.update(e2e.results())
    return row


# -- end to end: the library's whole path into a real file --------------------------------------------


def write_latents(path: Path, latents, latent_space: str, fps: float = 16.0) -> Path:
    """Save normalized latents [B,C,T,h,w] as a .safetensors file that `flashdecode decode` reads as is."""
    from safetensors.torch import save_file

    save_file({"latents": latents.detach().cpu().contiguous()}, str(path),
              metadata={"layout": "NCTHW", "latent_space": latent_space, "normalized": "true", "fps": f"{fps:g}",
                        "source": "random normal (flashdecode bench)"})
    return path


def write_random_latents(path, latent_space: str, height: int, width: int, latent_frames: int,
                         dtype: str = "bfloat16", seed: int = 0) -> Path:
    """Random normalized latents for a HxW clip of `latent_frames` (gpu.sh's input for `decode` end to end)."""
    import torch

    from .latent_spaces import get_latent_space

    space = get_latent_space(latent_space)
    s = space.spatial
    if height % s or width % s:
        raise FlashdecodeError(f"{height}x{width} is not a multiple of {s} pixels per latent cell of {latent_space}")
    z = torch.randn(1, space.channels, latent_frames, height // s, width // s,
                    generator=torch.Generator().manual_seed(seed))
    return write_latents(Path(path), z.to(getattr(torch, dtype)), space.name)


@contextmanager
def stdout_to_devnull():
    """Point file descriptor 1 at /dev/null for a while: raw video goes nowhere, not into the row pipe."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class EndToEnd:
    """The clip through `flashdecode.decode_file` with the case's own warm decoder (read a latent file ->
    decode -> convert -> encode -> flushed file), timed as the user sees it: from the start of decoding to
    the closed file. A failing run is kept as `e2e_error` and ends the end-to-end runs, not the case.
    CUDA peak memory: decode_file's own reading (weights, activations, conversion buffers)."""

    def __init__(self, case: Case, decoder, pool):
        self.case, self.decoder, self.pool = case, decoder, pool
        self.runs: list[dict] = []
        self.error: str | None = None
        n = case.latent_frames
        file_bytes = n * pool[:, :, 0].numel() * pool.element_size()
        if file_bytes > E2E_MAX_FILE_BYTES:
            self.error = (f"the end-to-end input for {n} latent frames would be a {file_bytes / 1e9:.1f} GB latent "
                          f"file (limit {E2E_MAX_FILE_BYTES / 1e9:.0f} GB); measure a shorter clip")
        self._tmp = tempfile.TemporaryDirectory(prefix="flashdecode-bench-")  # removed with this object
        self.folder = Path(self._tmp.name)

    def run(self, frames: int, timed: bool = True) -> None:
        from .pipeline import decode_file

        if self.error:
            return
        raw = self.case.output == "raw"
        try:
            z = self.pool[:, :, [t % self.pool.shape[2] for t in range(frames)]]
            source = self.folder / f"latents_{frames}.safetensors"
            if not source.exists():
                write_latents(source, z, self.case.latent_space)
            output = "-" if raw else str(self.folder / "e2e.mp4")
            with stdout_to_devnull() if raw else nullcontext():
                summary = decode_file(source, output, decoder=self.decoder, latent_space=self.case.latent_space,
                                      quiet=True, stdout_format="raw" if raw else None)
            if not raw:
                summary["bytes"] = Path(output).stat().st_size
                Path(output).unlink()
        except Exception as e:  # the decode-only numbers still stand
            self.error = f"{type(e).__name__}: {e}".splitlines()[0]
            return
        if timed:
            self.runs.append(summary)

    def results(self) -> dict:
        self._tmp.cleanup()
        if not self.runs:
            return dict(output=self.case.output, e2e_fps=None, e2e_error=self.error or "no end-to-end run")
        runs = self.runs
        seconds = statistics.median(r["seconds"] for r in runs)
        frames = runs[0]["frames"]
        cuda = self.case.device.startswith("cuda")
        row = dict(output=self.case.output, e2e_fps=frames / seconds, e2e_ms=seconds * 1e3, e2e_frames=frames,
                   e2e_runs=len(runs), e2e_bytes_per_frame=runs[0]["bytes"] / frames if "bytes" in runs[0] else None,
                   e2e_peak_mem_bytes=max(r["peak_mem_bytes"] for r in runs) if cuda else None,
                   e2e_peak_reserved_bytes=max(r.get("peak_mem_reserved_bytes") or 0 for r in runs) if cuda else None,
                   e2e_method="flashdecode.decode_file, start of decoding to closed file, median; each run right "
                              "after a decode-only run")
        if self.error:
            row["e2e_error"] = self.error
        return row


def _case_main(case_json: str) -> None:
    case = Case(**json.loads(case_json))
    try:
        row = run_case(case)
    except Exception as e:  # reported in the row; the parent shows it in the table
        import torch

        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        row = dict(failed_row(case), error="out of memory" if oom else f"{type(e).__name__}: {e}".splitlines()[0])
    print(ROW_MARK + json.dumps(row), flush=True)


# -- the parent: run cases, gather rows ----------------------------------------------------------------


def failed_row(case: Case, **why) -> dict:
    return dict(decoder=case.decoder, kind=case.kind, model=case.model, res=case.res, height=case.height,
                width=case.width, frames=pixel_frames(case.latent_frames), latent_frames=case.latent_frames,
                latent_space=case.latent_space if case.kind == "flashdecode" else case.model, device=case.device,
                dtype=case.dtype, compile=case.compile if case.kind == "flashdecode" else "off", compiled=False,
                output=case.output if case.kind == "flashdecode" else None,
                random_weights=case.kind == "baseline" or case.weights == "random",
                params=None, fps=None, ms_per_latent_frame=None, peak_mem_bytes=None, **why)


def run_case_process(case: Case, timeout: float | None = None) -> dict:
    """Run one case in a fresh interpreter and return its row (an error row if it fails)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "flashdecode.bench", "--case", json.dumps(asdict(case))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return failed_row(case, error=f"timed out after {timeout:g} s (--timeout)")
    for line in proc.stdout.splitlines():
        if line.startswith(ROW_MARK):
            return json.loads(line[len(ROW_MARK):])
    if proc.returncode == -9:  # SIGKILL: on Linux almost always the kernel's OOM killer
        return failed_row(case, error="case process killed (SIGKILL; out of memory?)")
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return failed_row(case, error=f"case process exited with code {proc.returncode}: {tail}")


def too_long(case: Case, rows: list[dict]) -> str | None:
    """Why to skip a long case: a shorter run of the same decoder says one run would pass the budget."""
    done = [r for r in rows if r["decoder"] == case.decoder and r["res"] == case.res and r.get("ms_per_latent_frame")
            and r["dtype"] == case.dtype and r.get("compile", "off") == case.compile
            and r["latent_frames"] < case.latent_frames]
    if not done:
        return None
    estimate = max(r["ms_per_latent_frame"] for r in done) * case.latent_frames / 1e3
    if estimate > case.budget_s:
        return f"skipped: one run would take ~{estimate:.0f} s (> --budget-s {case.budget_s:.0f})"
    return None


def add_ratios(rows: list[dict]) -> list[dict]:
    """Speed-up and memory ratio of each FlashDecoder row against the baseline run on the same clip (same
    dtype first: fp8 rows pair with the bf16 baseline), end-to-end against decode-only FPS, and each row's
    peak memory against its own shortest length."""
    def ok(r):
        return r.get("fps") is not None

    def same_clip(a, b):
        return all(a[k] == b[k] for k in ("height", "width", "latent_frames", "device"))

    def config(r):
        return r["decoder"], r["res"], r["device"], r["dtype"], r.get("compile", "off")

    for r in rows:
        if r["kind"] == "flashdecode":
            bases = [b for b in rows if b["kind"] == "baseline" and ok(b) and ok(r) and same_clip(b, r)]
            bases.sort(key=lambda b: (b["dtype"] != r["dtype"], b["dtype"] != "bfloat16", b["model"] != r["latent_space"]))
            base = bases[0] if bases else None
            r["baseline"] = base and base["decoder"]
            r["speedup_vs_baseline"] = base and base["total_ms"] / r["total_ms"]
            r["mem_ratio_vs_baseline"] = base and base["peak_mem_bytes"] / r["peak_mem_bytes"]
            if r.get("e2e_fps") and ok(r):
                r["e2e_vs_fps"] = r["e2e_fps"] / r["fps"]
        shortest = [s for s in rows if ok(s) and config(s) == config(r)]
        if ok(r) and len(shortest) > 1:
            first = min(shortest, key=lambda s: s["latent_frames"])
            r["mem_vs_shortest"] = r["peak_mem_bytes"] / first["peak_mem_bytes"]
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(rows: list[dict]) -> dict:
    """Where the numbers come from (no host name)."""
    import torch

    from . import __version__

    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    names = sorted({r["device_name"] for r in rows if r.get("device_name") and r.get("device") == "cuda"})
    return dict(cpu=cpu_model(), cores=os.cpu_count(), torch_threads=next((r["threads"] for r in rows if "threads" in r), None),
                torch=torch.__version__, cuda=torch.version.cuda, device_name=", ".join(names) or cpu_model(),
                python=platform.python_version(), os=f"{platform.system()} {platform.release()}",
                flashdecode=__version__, diffusers=installed("diffusers"), av=installed("av"),
                malloc_mmap_threshold=CHILD_ENV["MALLOC_MMAP_THRESHOLD_"])


def write_json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"machine": machine_info(rows), "rows": rows}, indent=2) + "\n")
    tmp.replace(path)


@dataclass
class Bench:
    """The parent process: runs every case in its own process, in order, and keeps the rows."""

    cases: list[Case]
    timeout: float | None = None
    json_path: Path | None = None
    rows: list[dict] = field(default_factory=list)

    def run(self, progress=None) -> list[dict]:
        for i, case in enumerate(self.cases, 1):
            what = (f"[{i}/{len(self.cases)}] {case.decoder} {case.dtype}"
                    + (f" compile={case.compile}" if case.kind == "flashdecode" and case.compile != "off" else "")
                    + f" {case.res} {pixel_frames(case.latent_frames)} frames")
            skip = too_long(case, self.rows)
            if progress:
                progress(f"{what}: {skip}" if skip else f"{what} ...")
            started = time.perf_counter()
            row = failed_row(case, skipped=skip) if skip else run_case_process(case, self.timeout)
            self.rows.append(row)
            add_ratios(self.rows)
            if self.json_path:  # after every case: a run cut short still leaves its results
                write_json(self.json_path, self.rows)
            if progress and not skip:
                e2e = ""
                if row.get("e2e_fps"):
                    e2e = f", end to end ({row['output']}) {row['e2e_fps']:.2f} FPS"
                elif row.get("e2e_error"):
                    e2e = f", end to end ({row['output']}) failed: {row['e2e_error']}"
                progress(f"{what}: " + (row.get("error") or f"{row['fps']:.2f} FPS{e2e}, {row['runs']} runs, "
                                        f"{time.perf_counter() - started:.0f} s"))
        return self.rows


# -- presenting ----------------------------------------------------------------------------------------


SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "fp8": "fp8"}


def display_name(row: dict, dtype: bool = False) -> str:
    """'FlashDecoder-XL' (with dtype=True: 'FlashDecoder-XL fp8 compiled'), 'Wan2.2 conv VAE'."""
    if row["kind"] == "flashdecode":
        name = f"FlashDecoder-{row['model'].upper()}"
        if dtype:
            name += f" {SHORT_DTYPES.get(row['dtype'], row['dtype'])}"
        compile_mode = row.get("compile", "off")
        if compile_mode == "on" or (compile_mode == "auto" and row.get("compiled")):
            name += " compiled"
        return name
    return f"{row['model'].capitalize()} conv VAE" + (f" {SHORT_DTYPES.get(row['dtype'], row['dtype'])}" if dtype else "")


def series(row: dict) -> tuple:
    """What makes one line of results: decoder, dtype and compile mode."""
    return row["decoder"], row["dtype"], row.get("compile", "off")


def _mb(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f} MiB" if b >= 2**20 else f"{b / 2**20:.2f} MiB"


def _num(v, fmt: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def render_table(rows: list[dict]):
    """The paper's table: one row per decoder and clip, with speed-up and memory ratio against the baseline."""
    from rich.table import Table

    lengths = len({r["latent_frames"] for r in rows}) > 1
    dtypes = len({r["dtype"] for r in rows}) > 1
    outputs = sorted({r["output"] for r in rows if r.get("output")})
    devices = sorted({f"{r['device']} {r['dtype']}" for r in rows})
    table = Table(title=f"flashdecode bench ({', '.join(devices)})", title_justify="left")
    for col in ("decoder", "res", "frames (latent)", "params", "GFLOP/frame", "1st frame", "ms/latent frame\nmedian | p90",
                "FPS", "TFLOP/s", "peak mem\n(before decode)", "speed-up", "less mem"):
        table.add_column(col, justify="left" if col in ("decoder", "res") else "right", no_wrap=col == "decoder")
    if outputs:
        table.add_column(f"end to end FPS\n({', '.join(outputs)}; x FPS)", justify="right")
    if lengths:
        table.add_column("peak vs\nshortest", justify="right")
    notes = []
    for r in rows:
        why = r.get("error") or r.get("skipped")
        base = r["kind"] == "baseline"
        cells = [display_name(r, dtypes) + (" (random weights)" if r["random_weights"] else ""), r["res"],
                 f"{r['frames']} ({r['latent_frames']})"]
        if why:
            notes.append(f"[{len(notes) + 1}] {cells[0]}, {r['res']}, {r['latent_frames']} latent frames: {why}")
            label = "failed" if r.get("error") else "skipped"
            cells += [f"[{'red' if r.get('error') else 'yellow'}]{label} [{len(notes)}][/]"] + [""] * (8 + bool(outputs))
        else:
            cells += [f"{r['params'] / 1e6:.1f} M", _num(r["flops_per_frame"] and r["flops_per_frame"] / 1e9, ",.1f"),
                      f"{r['ttff_ms']:,.0f} ms", f"{r['ms_per_latent_frame']:,.1f} | {r['ms_per_latent_frame_p90']:,.1f}",
                      f"{r['fps']:,.2f}", f"{r['tflops_per_s']:.3f}",
                      f"{_mb(r['peak_mem_bytes'])} ({_mb(r['mem_before_bytes'])})",
                      "baseline" if base else _num(r.get("speedup_vs_baseline"), ".1f", "x"),
                      "baseline" if base else _num(r.get("mem_ratio_vs_baseline"), ".1f", "x")]
            if outputs:
                if r.get("e2e_error"):
                    notes.append(f"[{len(notes) + 1}] {cells[0]}, {r['res']}, end to end: {r['e2e_error']}")
                    cells.append(f"[red]failed [{len(notes)}][/]")
                else:
                    cells.append("-" if not r.get("e2e_fps") else f"{r['e2e_fps']:,.2f} ({r['e2e_vs_fps']:.2f}x)")
        if lengths:
            cells.append(_num(r.get("mem_vs_shortest"), ".3f"))
        table.add_row(*cells)
    if any(r["random_weights"] for r in rows):
        notes.append("random weights: speed and memory do not depend on the weight values.")
    if any(r["kind"] == "baseline" for r in rows):
        notes.append("speed-up = baseline time / this time; less mem = baseline peak / this peak. A conv baseline "
                     "returns the clip only once all of it is decoded: its 1st frame = the whole clip.")
    if outputs:
        notes.append("end to end: the same clip through flashdecode.decode_file (latent file -> decode -> convert -> "
                     "encode -> flushed file; raw: rgb24 to /dev/null) in the same process; x FPS = its FPS / FPS.")
    if any(r.get("device") == "cpu" and r.get("fps") for r in rows):
        notes.append("CPU memory: peak RSS of each case's own process, weights and runtime included.")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def check_plot_dependency() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FlashdecodeError("--plot needs matplotlib; install it with `pip install flashdecode[plot]`") from None


def plot(rows: list[dict], path: Path) -> None:
    """FPS and peak memory per decoder and resolution (or, for --lengths, against video length)."""
    check_plot_dependency()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("fps")]
    decoders = list(dict.fromkeys(series(r) for r in rows))
    dtypes = len({r["dtype"] for r in rows}) > 1
    fig, (ax_fps, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
    if len({r["latent_frames"] for r in rows}) > 1:
        for d in decoders:
            for res in dict.fromkeys(r["res"] for r in rows if series(r) == d):
                pts = sorted(((r["latent_frames"], r) for r in rows if series(r) == d and r["res"] == res),
                             key=lambda p: p[0])
                label = f"{display_name(pts[0][1], dtypes)} {res}"
                ax_fps.plot([n for n, _ in pts], [r["ms_per_latent_frame"] for _, r in pts], "o-", label=label)
                ax_mem.plot([n for n, _ in pts], [r["peak_mem_bytes"] / 2**20 for _, r in pts], "o-", label=label)
        for ax, ylabel in ((ax_fps, "ms per latent frame"), (ax_mem, "peak memory (MiB)")):
            ax.set_xscale("log")
            ax.set_xlabel("latent frames")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize="small")
        ax_fps.set_yscale("log")  # conv baselines and FlashDecoder are orders of magnitude apart
        ax_mem.set_ylim(0, ax_mem.get_ylim()[1] * 1.15)  # from zero: flat memory is visible as flat
    else:
        resolutions = list(dict.fromkeys(r["res"] for r in rows))
        width = 0.8 / max(len(decoders), 1)
        for i, d in enumerate(decoders):
            by_res = {r["res"]: r for r in rows if series(r) == d}
            xs = [j + i * width for j, res in enumerate(resolutions) if res in by_res]
            label = display_name(next(iter(by_res.values())), dtypes)
            ax_fps.bar(xs, [by_res[res]["fps"] for res in resolutions if res in by_res], width, label=label)
            ax_mem.bar(xs, [by_res[res]["peak_mem_bytes"] / 2**20 for res in resolutions if res in by_res], width,
                       label=label)
        for ax, ylabel in ((ax_fps, "FPS (pixel frames / s)"), (ax_mem, "peak memory (MiB)")):
            ax.set_xticks([j + width * (len(decoders) - 1) / 2 for j in range(len(resolutions))], resolutions)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize="small")
        ax_fps.set_yscale("log")  # conv baselines and FlashDecoder are orders of magnitude apart
    devices = ", ".join(sorted({f"{r['device']} {r['dtype']}" for r in rows}))
    fig.suptitle(f"flashdecode bench ({devices}; random weights)" if any(r["random_weights"] for r in rows)
                 else f"flashdecode bench ({devices})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_baseline_dependency(baselines: list[str]) -> None:
    """Fail before any case runs, with the install line (find_spec: importing diffusers takes seconds)."""
    import importlib.util

    if baselines and importlib.util.find_spec("diffusers") is None:
        from .wan_vae import autoencoder_class

        autoencoder_class()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        _case_main(sys.argv[2])
    else:
        sys.exit("usage: python -m flashdecode.bench --case JSON (an internal entry point of `flashdecode bench`)")
