import json

import pytest
import torch

import flashdecode
from flashdecode import FlashdecodeError
from flashdecode.checkpoint import find_weights, read_metadata, save_checkpoint


def test_round_trip_is_exact(tmp_path):
    d = flashdecode.load_decoder("tiny", "wan2.1", weights="random")
    path = save_checkpoint(tmp_path / "tiny.safetensors", d.model, "wan2.1", {"steps": 3})
    meta = read_metadata(path)
    assert meta["variant"] == "tiny" and meta["latent_space"] == "wan2.1" and meta["provenance"] == {"steps": 3}
    loaded = flashdecode.load_decoder(None, None, weights=path)  # variant and latent space from the file
    assert loaded.config == d.config and loaded.latent_space.name == "wan2.1" and not loaded.random_weights
    for (k, a), (_, b) in zip(d.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k
    z = torch.randn(1, 16, 2, 4, 4)
    assert torch.equal(d.decode(z), loaded.decode(z))


def test_wrong_variant_fails_with_a_clear_message(tmp_path):
    d = flashdecode.load_decoder("tiny", "wan2.2", weights="random")
    path = save_checkpoint(tmp_path / "tiny.safetensors", d.model, "wan2.2")
    with pytest.raises(FlashdecodeError, match=r"does not fit model 'xs'.*in the file.*--model"):
        flashdecode.load_decoder("xs", "wan2.2", weights=path)
    with pytest.raises(FlashdecodeError, match="latent space 'wan2.2', not 'wan2.1'"):
        flashdecode.load_decoder("tiny", "wan2.1", weights=path)


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FlashdecodeError, match="not a readable safetensors"):
        flashdecode.load_decoder("tiny", weights=bad)
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"whatever")
    with pytest.raises(FlashdecodeError, match="never unpickled"):
        flashdecode.load_decoder("tiny", weights=pickle)


def test_weights_folder_is_searched(tmp_path, monkeypatch):
    d = flashdecode.load_decoder("tiny", "wan2.1", weights="random")
    save_checkpoint(tmp_path / "mine.safetensors", d.model, "wan2.1")
    monkeypatch.setenv("FLASHDECODE_WEIGHTS", str(tmp_path))
    assert find_weights("tiny", "wan2.1") == tmp_path / "mine.safetensors"
    assert flashdecode.load_decoder("tiny", "wan2.1").random_weights is False


def save_with(tmp_path, state, meta, name="ckpt.safetensors"):
    from safetensors.torch import save_file
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    return path


def tiny_checkpoint():
    d = flashdecode.load_decoder("tiny", "wan2.2", weights="random")
    meta = {"format": "flashdecode", "variant": "tiny", "latent_space": "wan2.2", "config": d.config.to_json()}
    return d.model.state_dict(), meta


def test_nan_or_inf_weights_are_refused_at_load(tmp_path):
    state, meta = tiny_checkpoint()
    state["blocks.1.mlp.w3.weight"][3, 5] = float("nan")
    state["head.4.bias"][0] = float("inf")
    with pytest.raises(FlashdecodeError, match=r"NaN or Inf values in blocks\.1\.mlp\.w3\.weight \(and 1 more"):
        flashdecode.load_decoder(None, None, weights=save_with(tmp_path, state, meta))


def test_a_large_config_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    # 5 MB of tensors claiming a 64 x 8192 model (~50 GB): the header is checked, nothing is built.
    state, meta = tiny_checkpoint()
    monkeypatch.setattr("flashdecode.engine.build_model", lambda *a, **k: pytest.fail("model built before checking"))
    config = json.loads(meta["config"]) | {"depth": 64, "dim": 8192, "heads": 64, "kv_heads": 8}
    path = save_with(tmp_path, state, meta | {"config": json.dumps(config)})
    with pytest.raises(FlashdecodeError, match=r"does not fit model 'tiny' \(64x8192\).*in the file"):
        flashdecode.load_decoder(None, None, weights=path)
    for bad, why in [({"depth": 10**9}, "depth is 1000000000"), ({"dim": -4}, "dim is -4"),
                     ({"kv_heads": 3}, "multiple of kv_heads"), ({"rope_axes": [1, 2]}, "rope_axes"),
                     ({"window": "2"}, "window is '2'")]:
        path = save_with(tmp_path, state, meta | {"config": json.dumps(json.loads(meta["config"]) | bad)})
        with pytest.raises(FlashdecodeError, match=f"unusable model config.*{why}"):
            flashdecode.load_decoder(None, None, weights=path)


def test_malformed_config_json_is_one_line(tmp_path):
    state, meta = tiny_checkpoint()
    for text in ["{not json", "[1, 2]", "[" * 100000]:
        path = save_with(tmp_path, state, meta | {"config": text})
        with pytest.raises(FlashdecodeError, match="malformed 'config' metadata|unusable model config"):
            flashdecode.load_decoder(None, None, weights=path)


def test_non_float_tensors_are_refused(tmp_path):
    state, meta = tiny_checkpoint()
    state["embed.bias"] = torch.zeros_like(state["embed.bias"], dtype=torch.int32)
    with pytest.raises(FlashdecodeError, match="embed.bias as I32, not floating point"):
        flashdecode.load_decoder(None, None, weights=save_with(tmp_path, state, meta))
