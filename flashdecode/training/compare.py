"""See the difference: a side-by-side comparison video and a per-frame PSNR chart of `flashdecode eval`.

The video puts, left to right, the ground truth, the decoder's output, the teacher's own decoder (when it has
one) and a heat map of the decoder's error; it is written a few frames at a time through `VideoWriter`, so it
holds no more than the clip that the evaluation holds anyway. The heat map is matplotlib's "hot" ramp (black,
red, yellow, white) of the mean absolute error over R, G and B, full scale at HEAT_FULL_SCALE: fixed, so two
runs' maps compare.
"""
from __future__ import annotations

import math
from pathlib import Path

import av
import torch

from ..errors import FlashdecodeError, first_line, shown
from ..video_io import CONTAINERS, VideoWriter, to_uint8_frames

HEAT_FULL_SCALE = 32 / 255  # white at an error of 32 levels of 255 (1/8 of the range); PSNR ~30 dB is dark red
CHUNK = 4  # frames composed and handed to the writer at a time
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_compare_path(path: Path) -> None:
    """Before any work: a video file name in a folder that exists (VideoWriter checks it can write there)."""
    if path.is_dir() or path.suffix.lower() not in CONTAINERS:
        raise FlashdecodeError(f"--compare {shown(path)}: give a video file name ending in "
                               f"{', '.join(CONTAINERS)} (e.g. compare.mp4)")
    if not path.parent.is_dir():
        raise FlashdecodeError(f"--compare {shown(path)}: folder {shown(path.parent)} does not exist")


def check_plot_path(path: Path) -> None:
    from ..bench import check_plot_dependency

    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise FlashdecodeError(f"--plot {shown(path)}: give an image file name ending in {', '.join(PLOT_SUFFIXES)} "
                               "(e.g. psnr.png)")
    if path.is_dir() or not path.parent.is_dir():
        raise FlashdecodeError(f"--plot {shown(path)}: " + ("it is a folder" if path.is_dir() else
                                                            f"folder {shown(path.parent)} does not exist"))
    check_plot_dependency()


def error_heat(decoded: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] clips in [-1, 1] -> the heat map of their difference, [3, T, H, W] in [-1, 1]."""
    v = ((decoded - truth).abs().mean(0) / 2 / HEAT_FULL_SCALE).clamp(0, 1)  # [T, H, W], 1 = full scale
    rgb = torch.stack([(3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)])  # "hot"
    return rgb * 2 - 1


class ComparisonWriter:
    """Writes each evaluated clip's panels side by side: truth | decoded | teacher's decoder | error heat map."""

    def __init__(self, path: Path, fps: float, panels: list[str]):
        self.path, self.panels = path, panels
        self.writer = VideoWriter(str(path), fps=fps)  # checks the path can be written before any work

    def write_clip(self, truth: torch.Tensor, decoded: torch.Tensor, baseline: torch.Tensor | None = None) -> None:
        """Clips [3, T, H, W] in [-1, 1], on the CPU."""
        for t in range(0, truth.shape[1], CHUNK):
            window = slice(t, t + CHUNK)
            panels = [truth[:, window], decoded[:, window], *([] if baseline is None else [baseline[:, window]]),
                      error_heat(decoded[:, window], truth[:, window])]
            try:
                self.writer.write(to_uint8_frames(torch.cat(panels, dim=-1)))
            except (OSError, av.error.FFmpegError) as e:  # a full disk; an encoder that refuses the frame size
                raise self._failed(e) from None

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def close(self) -> None:
        try:
            self.writer.close()
        except (OSError, av.error.FFmpegError) as e:
            raise self._failed(e) from None

    def _failed(self, e: Exception) -> FlashdecodeError:
        """The writer cuts a file that a full disk or size limit stopped back to what plays (or removes it): say
        what is kept. An encoder that refuses the frame (libx264 past its largest width) keeps nothing."""
        try:
            self.writer.close()
        except (OSError, av.error.FFmpegError):
            pass  # the error being reported
        kept = self.writer.frames_written
        why = getattr(e, "strerror", None) or first_line(e)
        if isinstance(e, av.error.FFmpegError) and not kept and self.writer.size:
            h, w = self.writer.size
            why += f" (the video is {w}x{h}, {len(self.panels)} panels side by side: pass a smaller --size)"
        return FlashdecodeError(f"cannot write --compare {shown(self.path)}: {why}; "
                                + (f"it keeps the {kept} frames before that" if kept else "nothing was kept"))

    def __enter__(self) -> "ComparisonWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_psnr(rows: list[dict], series: dict[str, str], path: Path, title: str) -> None:
    """Per-frame PSNR of every decoder evaluated, the clips one after another (dotted lines between them).

    series: row key of a per-frame list -> its legend label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = [r for r in rows if r["clip"] != "overall"]
    fig, ax = plt.subplots(figsize=(10, 4))
    for key, label in series.items():
        values = [v for r in clips for v in r.get(key, [])]
        if values:
            mean = sum(values) / len(values)
            ax.plot(range(len(values)), [v if math.isfinite(v) else float("nan") for v in values], ".-",
                    label=f"{label} (frame mean {mean:.2f} dB)")
    start = 0
    for r in clips:
        if start:
            ax.axvline(start - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.annotate(r["clip"], (start, 1), xycoords=("data", "axes fraction"), xytext=(2, -12),
                    textcoords="offset points", fontsize="x-small", color="grey")
        start += r["frames"]
    ax.set_xlabel("frame (clips one after another)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise FlashdecodeError(f"cannot write --plot {shown(path)}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


__all__ = ["ComparisonWriter", "error_heat", "plot_psnr", "check_compare_path", "check_plot_path", "HEAT_FULL_SCALE"]
