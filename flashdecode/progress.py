"""Live decode statistics on stderr: progress, instant/mean FPS, ms per latent frame, peak memory, elapsed.

A Rich live line on a terminal, a plain line every few seconds when stderr is a file or a pipe, nothing
with quiet=True; `summary()` is the final line and `stats()` the same numbers as a dict (for --json).
FPS counts pixel frames (all batch items) per second of wall time, including time spent waiting for input.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from collections import deque

import torch

from .errors import printable


def peak_memory(device: torch.device) -> dict:
    """Peak memory so far: CUDA allocated/reserved by torch on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return {"peak_mem_bytes": torch.cuda.max_memory_allocated(device),
                "peak_mem_reserved_bytes": torch.cuda.max_memory_reserved(device), "peak_mem_kind": "cuda allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mem_bytes": rss if sys.platform == "darwin" else rss * 1024, "peak_mem_kind": "process peak RSS"}


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class DecodeProgress:
    """Feed it `update(latent_frames, pixel_frames)` after each decoded chunk; close with `finish()`."""

    def __init__(self, device: torch.device, total_latent_frames: int | None = None, quiet: bool = False,
                 stream=None, plain_every_s: float | None = None, label: str = "decode"):
        self.device, self.total, self.quiet, self.label = torch.device(device), total_latent_frames, quiet, label
        self.stream = stream or sys.stderr
        # Seconds between plain lines (logs); FLASHDECODE_PROGRESS_EVERY=0 gives one per latent frame.
        self.plain_every_s = plain_every_s if plain_every_s is not None else \
            float(os.environ.get("FLASHDECODE_PROGRESS_EVERY", 2.0))
        self.latent_frames = self.pixel_frames = 0
        self.start = time.perf_counter()
        self.recent: deque = deque([(self.start, 0)], maxlen=9)  # (time, pixel frames) of the last chunks
        self._last_plain = self.start
        self._live = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if not quiet and self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(file=self.stream), auto_refresh=False, transient=False)
            self._live.start()

    # -- numbers ---------------------------------------------------------------------------------

    def update(self, latent_frames: int, pixel_frames: int) -> None:
        self.latent_frames += latent_frames
        self.pixel_frames += pixel_frames
        now = time.perf_counter()
        self.recent.append((now, self.pixel_frames))
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
        elif not self.quiet and (self.latent_frames == latent_frames or now - self._last_plain >= self.plain_every_s):
            self._last_plain = now
            print(printable(self._line()), file=self.stream, flush=True)

    def stats(self) -> dict:
        elapsed = time.perf_counter() - self.start
        (t0, f0), (t1, f1) = self.recent[0], self.recent[-1]
        return {
            "latent_frames": self.latent_frames,
            "pixel_frames": self.pixel_frames,
            "seconds": round(elapsed, 4),
            "decode_fps": round(self.pixel_frames / elapsed, 3) if elapsed > 0 else 0.0,
            "instant_fps": round((f1 - f0) / (t1 - t0), 3) if t1 > t0 else 0.0,
            "ms_per_latent_frame": round(1000 * elapsed / self.latent_frames, 3) if self.latent_frames else None,
            "device": str(self.device),
            **peak_memory(self.device),
        }

    # -- display ---------------------------------------------------------------------------------

    def _memory_text(self, s: dict) -> str:
        if "peak_mem_reserved_bytes" in s:
            return f"peak {format_bytes(s['peak_mem_bytes'])} alloc / {format_bytes(s['peak_mem_reserved_bytes'])} reserved"
        return f"peak RSS {format_bytes(s['peak_mem_bytes'])}"

    def _line(self) -> str:
        s = self.stats()
        done = f"{self.latent_frames}/{self.total}" if self.total else f"{self.latent_frames}"
        ms = f"{s['ms_per_latent_frame']:.0f} ms/latent" if s["ms_per_latent_frame"] else "- ms/latent"
        return (f"{self.label}: {done} latent frames, {self.pixel_frames} frames, {s['instant_fps']:.1f} fps "
                f"(mean {s['decode_fps']:.1f}), {ms}, {self._memory_text(s)}, {s['seconds']:.1f} s")

    def _render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        s = self.stats()
        done = f"{self.latent_frames}/{self.total}" if self.total else f"{self.latent_frames}"
        ms = f"{s['ms_per_latent_frame']:.0f} ms/latent" if s["ms_per_latent_frame"] else "- ms/latent"
        text = Text.from_markup(f"{done} latent  [bold]{self.pixel_frames}[/] frames  [green]{s['instant_fps']:.1f} fps[/] "
                                f"(mean {s['decode_fps']:.1f})  {ms}  [cyan]{self._memory_text(s)}[/]  {s['seconds']:.1f} s")
        row = Table.grid(padding=(0, 1))
        if self.total:
            row.add_column(width=24)
        row.add_column(no_wrap=True, overflow="ellipsis")
        row.add_row(*([ProgressBar(total=self.total, completed=self.latent_frames, width=24)] if self.total else []), text)
        return row

    def summary(self, what: str = "decoded") -> str:
        s = self.stats()
        ms = f", {s['ms_per_latent_frame']:.1f} ms/latent frame" if s["ms_per_latent_frame"] else ""
        return (f"{what} {self.pixel_frames} frames from {self.latent_frames} latent frames in {s['seconds']:.2f} s: "
                f"{s['decode_fps']:.1f} fps{ms}, {self._memory_text(s)}, {s['device']}")

    def finish(self, what: str = "decoded", extra: str = "") -> dict:
        """Stop the live display, print the summary line (unless quiet), return the stats."""
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.stop()
            self._live = None
        if not self.quiet:
            print(printable(self.summary(what) + extra), file=self.stream, flush=True)  # names are in `extra`
        return self.stats()
