"""The bench harness on tiny sizes: cases, rows, the JSON, the table, the plot, the baselines and gpu.sh.

Numbers are not asserted (the CPU is shared and noisy); the structure is.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashdecode import FlashdecodeError
from flashdecode import bench as harness

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {"decoder", "res", "frames", "device", "dtype", "random_weights", "params", "fps", "ms_per_latent_frame",
            "peak_mem_bytes", "ms_per_latent_frame_p90", "ttff_ms", "flops_per_frame", "tflops_per_s",
            "mem_before_bytes", "latent_frames"}
MACHINE_KEYS = {"cpu", "cores", "torch", "cuda", "device_name"}


def test_resolutions():
    assert harness.parse_resolution("720p") == ("720p", 720, 1280)
    assert harness.parse_resolution("1080p") == ("1080p", 1088, 1920)
    assert harness.parse_resolution("256x128") == ("256x128", 256, 128)
    for bad in ("250x256", "720", "axb", "0x16"):
        with pytest.raises(FlashdecodeError):
            harness.parse_resolution(bad)


def test_cases_cover_every_decoder_resolution_and_length():
    cases = harness.build_cases(["32x32", "480p"], ["tiny", "s"], ["wan2.2"], [4, 2], dtypes=["float32"], device="cpu")
    assert len(cases) == 2 * 2 * 3
    assert [c.decoder for c in cases[:3]] == ["wan2.2-conv", "flashdecode-tiny", "flashdecode-s"]
    assert [c.latent_frames for c in cases[:6]] == [2, 2, 2, 4, 4, 4]  # shortest first
    with pytest.raises(FlashdecodeError, match="unknown model"):
        harness.build_cases(["32x32"], ["huge"], [], [2])
    with pytest.raises(FlashdecodeError, match="unknown baseline"):
        harness.build_cases(["32x32"], ["s"], ["wan3"], [2])


def test_run_case_in_process_gives_a_complete_row():
    case = harness.Case("flashdecode", "tiny", "32x48", 32, 48, latent_frames=3, warmup=1, repeat=1)
    row = harness.run_case(case)
    assert ROW_KEYS <= row.keys()
    assert row["frames"] == 9 and row["random_weights"] is True and row["runs"] >= 1
    assert row["peak_mem_bytes"] >= row["mem_before_bytes"] > 0
    assert row["ms_per_latent_frame_p90"] >= row["ms_per_latent_frame"] > 0


def test_ratios_pair_each_decoder_with_the_baseline_of_the_same_clip():
    def row(kind, model, n, total, peak, space="wan2.2"):
        return dict(decoder=model, kind=kind, model=model, res="r", height=32, width=32, latent_frames=n,
                    latent_space=space, device="cpu", dtype="float32", fps=1.0, total_ms=total, peak_mem_bytes=peak)

    rows = harness.add_ratios([row("baseline", "wan2.1", 2, 300.0, 900), row("baseline", "wan2.2", 2, 1000.0, 800),
                               row("flashdecode", "s", 2, 10.0, 100), row("flashdecode", "s", 8, 40.0, 101)])
    fd = rows[2]
    assert fd["baseline"] == "wan2.2"  # the baseline of its own latent space, not the first listed
    assert fd["speedup_vs_baseline"] == pytest.approx(100.0) and fd["mem_ratio_vs_baseline"] == pytest.approx(8.0)
    assert rows[3]["speedup_vs_baseline"] is None  # no baseline ran at 8 latent frames
    assert rows[3]["mem_vs_shortest"] == pytest.approx(1.01)


def test_budget_skips_lengths_that_would_take_too_long():
    case = harness.Case("baseline", "wan2.2", "r", 32, 32, latent_frames=1000, budget_s=10)
    done = [dict(decoder="wan2.2-conv", res="r", dtype="float32", latent_frames=10, ms_per_latent_frame=500.0)]
    assert "skipped" in harness.too_long(case, done)
    case.latent_frames = 15
    assert harness.too_long(case, done) is None


def test_baseline_builders_decode_like_diffusers():
    from flashdecode.baselines import build_vae, load_baseline

    assert sum(p.numel() for p in build_vae("wan2.2").parameters()) == 555_051_580  # docs/design.md: 555.0 M
    assert sum(p.numel() for p in build_vae("wan2.1").parameters()) == 73_295_603  # 73.3 M
    for name, channels, grid in (("wan2.1", 16, (4, 6)), ("wan2.2", 48, (2, 3))):  # /8 and /16
        base = load_baseline(name, "cpu", torch.float32, size="tiny")
        assert base.latent_space.channels == channels and base.latent_grid(32, 48) == grid
        out = base.decode(torch.randn(1, channels, 2, *grid))
        assert out.shape == (1, 3, 5, 32, 48) and out.abs().max() <= 1
    assert base.flops(32, 48, 5) > base.flops(32, 48, 3) > 0


def test_baselines_without_diffusers_name_the_extra(monkeypatch):
    from flashdecode.baselines import load_baseline

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(FlashdecodeError, match=r"pip install flashdecode\[baselines\]"):
        load_baseline("wan2.2", size="tiny")


def test_table_and_plot_from_rows(tmp_path):
    pytest.importorskip("matplotlib")
    from rich.console import Console

    base = dict(kind="baseline", model="wan2.2", decoder="wan2.2-conv", random_weights=True, params=5e8, res="r",
                frames=9, latent_frames=3, device="cpu", dtype="float32", fps=0.2, ttff_ms=45e3,
                ms_per_latent_frame=15e3, ms_per_latent_frame_p90=20e3, flops_per_frame=1e12, tflops_per_s=0.2,
                peak_mem_bytes=4e9, mem_before_bytes=2.3e9)
    fd = dict(base, kind="flashdecode", model="s", decoder="flashdecode-s", fps=10.0, peak_mem_bytes=6e8,
              speedup_vs_baseline=50.0, mem_ratio_vs_baseline=6.7)
    skipped = dict(fd, latent_frames=1000, frames=3997, skipped="skipped: too long", fps=None)
    console = Console(width=250, record=True)
    console.print(harness.render_table([base, fd, skipped]))
    text = console.export_text()
    assert "FlashDecoder-S (random weights)" in text and "Wan2.2 conv VAE (random weights)" in text
    assert "50.0x" in text and "6.7x" in text and "skipped: too long" in text
    harness.plot([base, fd], tmp_path / "bars.png")
    harness.plot([fd, dict(fd, latent_frames=10, frames=37)], tmp_path / "lengths.png")
    assert (tmp_path / "bars.png").stat().st_size > 0 and (tmp_path / "lengths.png").stat().st_size > 0


def test_gpu_script_runs_every_step_on_cpu_at_tiny_sizes(tmp_path):
    """benchmarks/gpu.sh end to end with the CPU overrides: each bench and decode step, the JSON, the targets."""
    script = REPO / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = dict(os.environ, PYTHON=sys.executable, DEVICE="cpu", DTYPE="bf16", MODELS="tiny", RES="32x32", FRAMES="5",
               COMPILES="off", FP8_COMPILE="off", E2E_MODEL="tiny", E2E_RES="32x32", E2E_LATENT_FRAMES="3",
               LENGTHS="2,3", LENGTH_MODELS="tiny", LENGTH_RES="16x16", BENCH_ARGS="--baseline-size tiny --warmup 0",
               DECODE_ARGS="--dtype bf16", SKIP_INSTALL="1", SKIP_TESTS="1", NO_PLOT="1")
    proc = subprocess.run(["bash", str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "nvidia-smi.txt").exists()
    assert "flashdecode bench" in (tmp_path / "gpu.log").read_text()

    main = json.loads((tmp_path / "bench_bf16.json").read_text())
    assert MACHINE_KEYS <= main["machine"].keys() and "hostname" not in json.dumps(main["machine"]).lower()
    assert [r["decoder"] for r in main["rows"]] == ["wan2.2-conv", "flashdecode-tiny"]
    for r in main["rows"]:
        assert "error" not in r, r.get("error")
        assert ROW_KEYS <= r.keys() and r["random_weights"] is True and r["device"] == "cpu" and r["frames"] == 5
        assert r["dtype"] == "bfloat16"
    fd = main["rows"][1]
    assert fd["baseline"] == "wan2.2-conv" and fd["speedup_vs_baseline"] > 0 and fd["mem_ratio_vs_baseline"] > 0
    assert fd["output"] == "mp4" and fd["e2e_frames"] == 5 and fd["e2e_fps"] > 0 and fd["e2e_bytes_per_frame"] > 0

    for name, frames in (("mp4", 9), ("raw", 9)):  # the CLI end to end on a 3-latent-frame file
        summary = json.loads((tmp_path / f"decode_{name}.json").read_text())
        assert summary["status"] == "ok" and summary["frames"] == frames and summary["model"] == "tiny", summary
    lengths = json.loads((tmp_path / "bench_lengths.json").read_text())["rows"]
    assert [r["latent_frames"] for r in lengths] == [2, 3] and lengths[1]["mem_vs_shortest"] > 0
    assert (tmp_path / "bench_fp8.json").exists()

    targets = json.loads((tmp_path / "targets.json").read_text())["targets"]
    by_name = {t["target"]: t for t in targets}
    assert by_name["TINY bf16 FPS (32x32, 5-frame clips)"]["met"] is not None  # measured, whatever the verdict
    assert by_name["TINY bf16 speed-up vs Wan2.2 conv (32x32, same run)"]["measured"]
    assert by_name["TINY peak allocated, bf16 (32x32)"]["met"] is None  # CPU rows have no CUDA allocator peak
    assert by_name["decode -o out.mp4 --model tiny, end to end / decode-only"]["measured"]
    assert by_name["decode -o - --format raw --model tiny, end to end / decode-only"]["measured"]
    assert "met" in (tmp_path / "targets.txt").read_text()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-3), (torch.bfloat16, 6e-2)])
def test_streaming_equals_reference_on_cuda(dtype, tol):
    import flashdecode

    decoder = flashdecode.load_decoder("tiny", "wan2.2", weights="random", device="cuda", dtype=dtype)
    z = torch.randn(2, 48, 6, 3, 5, generator=torch.Generator().manual_seed(0)).cuda()
    streamed, reference = decoder.decode(z), decoder.decode_reference(z)
    assert streamed.shape == reference.shape == (2, 3, 21, 48, 80)
    assert (streamed - reference).abs().mean().item() <= tol / 10
    assert (streamed - reference).abs().max().item() <= tol


@pytest.mark.cuda
def test_bench_case_on_cuda_measures_device_memory():
    case = harness.Case("flashdecode", "tiny", "64x64", 64, 64, latent_frames=4, device="cuda", dtype="bfloat16",
                        repeat=2)
    row = harness.run_case(case)
    assert row["device"] == "cuda" and row["dtype"] == "bfloat16" and row["device_name"]
    assert row["peak_reserved_bytes"] >= row["peak_mem_bytes"] > 0 and row["mem_method"].startswith("cuda")
