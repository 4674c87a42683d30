"""`flashdecode eval --compare/--plot`: see the difference, with the bundled demo decoder and teacher on a short clip."""
import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flashdecode.cli import app
from flashdecode.training.compare import HEAT_FULL_SCALE, error_heat

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "tests" / "data" / "carphone_176x144_30fps_33f.mp4"  # 33 frames, 144x176, 30 fps
WEIGHTS = REPO / "weights" / "demo-xs.safetensors"
RANGES = [f"{CLIP}:0-9", f"{CLIP}:12-21"]  # two 9-frame clips
ARGS = ["--weights", str(WEIGHTS), "--size", "64x96", "--frames", "9"]
runner = CliRunner()


def evaluate(*args):
    return runner.invoke(app, ["eval", *map(str, args)])


def frames_of(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        assert c.streams.video[0].average_rate == 30  # the source's frame rate
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One eval with every output: the side-by-side video, the chart and the JSON rows."""
    pytest.importorskip("matplotlib")
    tmp = tmp_path_factory.mktemp("eval")
    r = evaluate(*RANGES, *ARGS, "--compare", tmp / "cmp.mp4", "--plot", tmp / "psnr.png", "--json", tmp / "e.json")
    assert r.exit_code == 0, r.output
    return tmp, r


def test_compare_is_a_playable_side_by_side_video(run):
    tmp, r = run
    frames = frames_of(tmp / "cmp.mp4")
    # 2 clips x 9 frames, four 64x96 panels: truth | decoded | PCA inverse | heat map
    assert len(frames) == 18 and frames[0].shape == (64, 4 * 96, 3)
    assert "wrote" in r.stderr and "18 frames" in r.stderr and "PCA inverse" in r.stderr

    from flashdecode import load_decoder
    from flashdecode.training.demo_codec import PCATeacher
    from flashdecode.training.video_data import read_clip
    from flashdecode.video_io import to_uint8_frames

    truth = read_clip(CLIP, 12, 9, (64, 96))  # the second clip: frames 9.. of the video
    teacher = PCATeacher.load()
    z = teacher.encode(truth[None])
    decoded = load_decoder(None, "demo", weights=str(WEIGHTS), device="cpu").decode(z).float()[0]
    expected = [truth, decoded, teacher.decode(z)[0], error_heat(decoded, truth)]
    luma = lambda x: x.astype(np.float32).mean(-1)  # noqa: E731  (4:2:0 video keeps luma sharp, chroma not)
    for i in range(4):  # each panel where it belongs: closest to its own picture, within the codec's loss
        got = luma(np.stack(frames[9:])[:, :, 96 * i: 96 * (i + 1)])
        diffs = [np.abs(got - luma(to_uint8_frames(panel))).mean() for panel in expected]
        assert np.argmin(diffs) == i and diffs[i] < (4 if i < 3 else 15), (i, diffs)


def test_plot_is_a_png_and_the_json_has_per_frame_psnr(run):
    from PIL import Image

    tmp, _ = run
    with Image.open(tmp / "psnr.png") as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200
    rows = json.loads((tmp / "e.json").read_text())["rows"]
    for row in rows[:2]:
        for prefix in ("", "teacher_"):
            per_frame = row[f"{prefix}psnr_per_frame"]
            assert len(per_frame) == 9
            # frames are equal in size: the clip's pooled PSNR is that of the frames' mean squared error
            pooled = -10 * math.log10(sum(10 ** (-p / 10) for p in per_frame) / 9)
            assert pooled == pytest.approx(row[f"{prefix}psnr"], abs=1e-6)


def test_error_heat_map_scale():
    truth = torch.zeros(3, 1, 1, 4)
    decoded = truth + torch.tensor([0, HEAT_FULL_SCALE * 2 / 3, HEAT_FULL_SCALE * 2, 1.0]).view(1, 1, 1, 4)
    heat = (error_heat(decoded, truth)[:, 0, 0] + 1) / 2  # [3, 4] in [0, 1]
    assert torch.allclose(heat.T, torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]]), atol=1e-6)


@pytest.mark.parametrize("extra,words,left", [
    (["--compare", "{tmp}/cmp.gif"], "--compare .*cmp.gif: give a video file name", "cmp.gif"),
    (["--compare", "{tmp}"], "give a video file name", None),
    (["--compare", "{tmp}/no/cmp.mp4"], "does not exist", "no"),
    (["--compare", str(CLIP)], "is the same file as the input", None),
    (["--compare", "{tmp}/same.mp4", "--json", "{tmp}/same.mp4"], "--json .* and --compare .* are one file", "same.mp4"),
    (["--plot", "{tmp}/psnr.jpeg"], "--plot .*psnr.jpeg: give an image file name", "psnr.jpeg"),
    (["--fps", "0", "--compare", "{tmp}/cmp.mp4"], "fps", "cmp.mp4"),
])
def test_bad_outputs_are_one_line_before_any_work(tmp_path, extra, words, left):
    import re

    before = CLIP.read_bytes()
    r = evaluate(*RANGES, *ARGS, *[a.replace("{tmp}", str(tmp_path)) for a in extra])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.output
    assert re.search(words, lines[0]), lines[0]
    assert left is None or not (tmp_path / left).exists()
    assert CLIP.read_bytes() == before


def test_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees where it is not installed
    r = evaluate(*RANGES, *ARGS, "--plot", tmp_path / "psnr.png")
    assert r.exit_code == 2 and "pip install flashdecode[plot]" in r.stderr, r.output
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
        "error: --plot needs matplotlib; install it with `pip install flashdecode[plot]`"]


@pytest.mark.slow
def test_compare_memory_does_not_grow_with_the_number_of_clips(tmp_path):
    """The side-by-side video is streamed clip by clip: 8 clips peak within 1.15x of 1 clip (each run in its own process)."""
    import subprocess
    import sys

    def peak_rss(ranges) -> int:
        code = ("import resource, runpy, sys\n"
                "try:\n    runpy.run_module('flashdecode', run_name='__main__')\n"
                "finally:\n    print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
        args = ["eval", *ranges, *ARGS, "--compare", str(tmp_path / "c.mp4")]
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
        assert "wrote" in r.stderr, r.stderr[-2000:]
        return int(r.stderr.split("maxrss")[-1])

    one = peak_rss(RANGES[:1])
    eight = peak_rss([f"{CLIP}:{s}-{s + 9}" for s in range(0, 24, 3)])
    assert len(frames_of(tmp_path / "c.mp4")) == 72
    assert eight < 1.15 * one, (one, eight)
