"""Many files into one folder (flashdecode.batch): one process, and 2 ranks under torchrun (gloo, CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flashdecode.batch import decode_files, expand_inputs, is_many
from flashdecode.errors import FlashdecodeError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--weights", "random", "--quiet"]


def make_inputs(folder: Path, n: int) -> list[Path]:
    """n small Wan2.1 clips, alternating .safetensors (with metadata) and .npy, 2 or 3 latent frames."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        z = torch.randn(1, 16, 2 + i % 2, 4, 6, generator=torch.Generator().manual_seed(i))
        if i % 2:
            paths.append(folder / f"clip{i}.npy")
            np.save(paths[-1], z.numpy())
        else:
            paths.append(folder / f"clip{i}.safetensors")
            save_file({"latents": z}, paths[-1], metadata={"latent_space": "wan2.1"})
    return paths


def frames_in(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_folder_glob_and_files(tmp_path):
    paths = make_inputs(tmp_path / "in", 3)
    assert not is_many([str(paths[0])]) and not is_many(["-"])
    assert is_many([str(tmp_path / "in")]) and is_many([str(tmp_path / "in" / "*.npy")]) and is_many(["a", "b"])
    assert expand_inputs([str(tmp_path / "in"), str(paths[1])]) == sorted(paths)  # folder sorted, duplicate once
    assert expand_inputs([str(tmp_path / "in" / "*.safetensors")]) == [paths[0], paths[2]]

    summary = decode_files([str(tmp_path / "in")], str(tmp_path / "out"), model="tiny", weights="random",
                           latent_space="wan2.1", json_path=tmp_path / "s.json")
    outs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in outs] == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    assert [frames_in(p) for p in outs] == [5, 9, 5]  # 1 + 4(T-1) for T = 2, 3, 2
    assert summary == json.loads((tmp_path / "s.json").read_text())
    assert summary["status"] == "ok" and summary["ok"] == 3 and summary["frames"] == 19


def test_a_bad_file_is_reported_and_the_others_written(tmp_path):
    paths = make_inputs(tmp_path / "in", 3)
    paths[1].write_bytes(b"not an npy file")
    with pytest.raises(FlashdecodeError, match="1 of 3 inputs failed"):
        decode_files([str(p) for p in paths], str(tmp_path / "out"), model="tiny", weights="random",
                     json_path=tmp_path / "s.json")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [f["status"] for f in summary["files"]] == ["ok", "error", "ok"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip0.mp4", "clip2.mp4"]


def test_a_stop_keeps_what_is_done_and_says_so(tmp_path, monkeypatch):
    import flashdecode.pipeline as pipeline
    from flashdecode.signals import Interrupted

    paths = make_inputs(tmp_path / "in", 3)
    real, calls = pipeline.decode_file, []

    def stopped_on_the_second(*args, **kwargs):  # SIGTERM arriving while the second file decodes
        calls.append(args[0])
        if len(calls) == 2:
            raise Interrupted(15)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_file", stopped_on_the_second)
    with pytest.raises(Interrupted):
        decode_files([str(tmp_path / "in")], str(tmp_path / "out"), model="tiny", weights="random",
                     json_path=tmp_path / "s.json")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["status"] == "terminated" and [Path(f["input"]) for f in summary["files"]] == paths
    assert [(f["status"], f["frames"]) for f in summary["files"]] == [("ok", 5), ("terminated", 0), ("not started", 0)]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["clip0.mp4"] and len(calls) == 2


def test_refused_before_decoding(tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "b" / "clip0.npy", np.zeros((1, 16, 2, 4, 6), np.float32))
    for inputs, output, match in [
        ([str(paths[0]), str(tmp_path / "b" / "clip0.npy")], str(tmp_path / "out"), "would both be written"),
        ([str(tmp_path / "in")], str(tmp_path / "x.mp4"), "pass -o FOLDER/"),
        ([str(tmp_path / "nothing" / "*.npy")], str(tmp_path / "out"), "no file matches"),
        ([str(paths[0]), "-"], str(tmp_path / "out"), "stdin"),
    ]:
        with pytest.raises(FlashdecodeError, match=match):
            decode_files(inputs, output, model="tiny", weights="random")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_torchrun_two_ranks_share_five_files(tmp_path):
    make_inputs(tmp_path / "in", 5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "flashdecode",
           "decode", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *TINY, "--json", str(tmp_path / "s.json")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "ok" and summary["inputs"] == 5
    files = summary["files"]
    assert sorted(Path(f["input"]).name for f in files) == [f"clip{i}{'.npy' if i % 2 else '.safetensors'}"
                                                           for i in range(5)]  # each input decoded by one rank
    assert {f["rank"] for f in files} == {0, 1}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"clip{i}.mp4" for i in range(5)]
    assert sorted(summary["outputs"]) == sorted(str(tmp_path / "out" / f"clip{i}.mp4") for i in range(5))
    assert [frames_in(tmp_path / "out" / f"clip{i}.mp4") for i in range(5)] == [5, 9, 5, 9, 5]
