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
