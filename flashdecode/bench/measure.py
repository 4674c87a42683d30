"""Inside a case process: load one decoder, warm it up, time `--repeat` decodes, report one row.

FlashDecoder and the other streamed families (the stock Wan VAE decoder streamed, the tiny TAEHV decoders) go
through the shared decoder interface (`stream`), consuming and dropping each pixel chunk as `decode` does;
diffusers' own `vae.decode` (kind "baseline") decodes the whole clip at once, as diffusers' Wan pipelines do.

Memory. CUDA: `max_memory_allocated` (and `_reserved`), its peak reset before each timed run, the largest kept.
The caching allocator is *not* emptied between runs: the warm-up has grown the pool to the clip's shapes, so
the decode-only and the end-to-end runs are timed under the same allocator state (emptying it before the
decode-only runs only would put the pool's regrowth in their timing and not in the end-to-end one's). CPU: the
case's peak resident set (VmHWM), reset likewise, with `MALLOC_MMAP_THRESHOLD_=262144` so glibc returns big
buffers at once instead of keeping a moving heap (docs/design.md section 7); the RSS just before the timed runs
is reported too, so weights and activations can be told apart.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ..errors import FlashdecodeError
from ..latent_spaces import pixel_frames
from .cases import E2E_MAX_FILE_BYTES, FAMILY_BASELINES, ROW_MARK, COMPILE_MODES, Case, failed_row
from .report import cpu_model

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
            torch.cuda.reset_peak_memory_stats()  # not empty_cache(): see the module docstring
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
    if case.kind == "family":
        return _load_family(case, device)
    if case.kind == "baseline":
        from ..wan_vae import load_baseline
        from ..engine import resolve_dtype

        base = load_baseline(case.model, device, resolve_dtype(case.dtype, device), size=case.baseline_size)
        h, w = base.latent_grid(case.height, case.width)
        flops = base.flops(case.height, case.width, case.latent_frames)
        return base, base.latent_space, (h, w), flops, "FlopCounterMode (meta device)"
    from ..engine import load_decoder
    from ..model import flops_per_clip

    dec = load_decoder(case.model, case.latent_space, weights=case.weights, device=device, dtype=case.dtype,
                       compile=COMPILE_MODES[case.compile])
    h, w = _latent_grid(dec, case)
    p = dec.config.patch
    flops = flops_per_clip(dec.config, h // p, w // p, case.latent_frames)
    return dec, dec.latent_space, (h, w), flops, "analytic (model.flops_per_clip)"


def _load_family(case: Case, device):
    """Another decoder family (the stock Wan VAE streamed, a tiny TAEHV decoder) through the shared interface."""
    from ..engine import load_decoder, resolve_dtype

    dtype = resolve_dtype(case.dtype, device)
    if case.baseline_size == "tiny" and case.model in FAMILY_BASELINES.values():
        from ..wan_vae import load_baseline  # the narrow random decoder the tiny baseline row calls through diffusers

        dec = load_baseline(case.model.removesuffix("-vae"), device, dtype, size="tiny")
    else:
        dec = load_decoder(case.model, weights="random", device=device, dtype=dtype)
    h, w = _latent_grid(dec, case)
    if hasattr(dec, "flops"):  # the whole clip, first frame counted as it is (the Wan VAE's makes 1 pixel frame, not 4)
        return dec, dec.latent_space, (h, w), dec.flops(case.height, case.width, case.latent_frames), \
            f"{type(dec).__name__}.flops"
    flops = dec.flops_per_latent_frame(h, w) * case.latent_frames
    return dec, dec.latent_space, (h, w), flops, f"{type(dec).__name__}.flops_per_latent_frame"


def _latent_grid(dec, case: Case) -> tuple[int, int]:
    """The case's latent grid for a decoder of the shared interface, and one line if it would not fit in memory
    (a huge --res fails here, not as an allocation attempt in the first step)."""
    from ..memory import check_memory

    s = dec.latent_space.spatial
    if case.height % s or case.width % s:
        raise FlashdecodeError(f"{case.height}x{case.width} is not a multiple of {s} pixels per latent cell")
    h, w = case.height // s, case.width // s
    check_memory(dec, 1, h, w)
    return h, w


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
        decode(min(n, 2 if case.kind == "baseline" else 3))
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
        compiled=getattr(getattr(decoder, "model", None), "compiled_frame", None) is not None,
        random_weights=bool(decoder.random_weights) or case.kind != "flashdecode", params=decoder.num_parameters(),
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

    from ..latent_spaces import get_latent_space

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
        from ..pipeline import decode_file

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


def case_main(case_json: str) -> None:
    """The case process: measure one case, print its row on one marked line of stdout."""
    case = Case(**json.loads(case_json))
    try:
        row = run_case(case)
    except Exception as e:  # reported in the row; the parent shows it in the table
        import torch

        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        row = dict(failed_row(case), error="out of memory" if oom else f"{type(e).__name__}: {e}".splitlines()[0])
    print(ROW_MARK + json.dumps(row), flush=True)


