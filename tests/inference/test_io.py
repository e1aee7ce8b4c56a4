import json
import os

import pytest
import torch

from inference.io import CHECKSUM_KEY, CheckpointError, atomic_torch_save, atomic_write_json, atomic_write_text, checksum, load_checkpoint


def test_atomic_writes_leave_no_temporary_files_and_write_strict_json(tmp_path):
    path = tmp_path / "sub" / "result.json"
    atomic_write_json(path, {"a": 1.5, "se": float("nan"), "nested": [float("inf"), 2]})
    with open(path) as f:
        assert json.load(f) == {"a": 1.5, "se": None, "nested": [None, 2]}
    atomic_write_text(path, "replaced")
    assert path.read_text() == "replaced"
    assert os.listdir(path.parent) == ["result.json"]
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # usual permissions, not mkstemp's


def _flip_bit_in(path, needle: bytes) -> None:
    """Flip one bit inside the first occurrence of ``needle`` (a tensor's raw bytes) in the file."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, "the tensor's bytes are not stored verbatim in the file"
    data[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_checkpoints_carry_a_checksum_and_damaged_ones_are_refused(tmp_path):
    weight = torch.linspace(-1, 1, 257)
    state = {"epoch": 3, "state_dict": {"w": weight}, "optimizer_states": [{"state": {0: {"exp_avg": weight * 0.5}}}]}
    path = tmp_path / "a.ckpt"
    atomic_torch_save(state, path)
    loaded = load_checkpoint(path)
    assert loaded[CHECKSUM_KEY] == checksum(state) and torch.equal(loaded["state_dict"]["w"], weight)
    assert checksum({**state, "epoch": 4}) != checksum(state)
    for needle in (weight, weight * 0.5):  # a model weight, then Adam's state
        atomic_torch_save(state, path)
        _flip_bit_in(path, needle.numpy().tobytes())
        with pytest.raises(CheckpointError, match="is damaged: its content does not match the checksum"):
            load_checkpoint(path)


def test_a_checkpoint_that_asks_to_run_code_is_refused_plainly(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused: the file .* asks to run code") as err:
        load_checkpoint(path)
    assert "weights_only=False" not in str(err.value)
    assert not (tmp_path / "ran").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.makedirs, ("/nonexistent-dir-should-never-be-made/ran",))


def test_a_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    import warnings

    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.warns(UserWarning, match="carries no checksum"):
        assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(2))
    with warnings.catch_warnings():  # the second read of the same file in one process says nothing more (it was said twice)
        warnings.simplefilter("error")
        assert torch.equal(load_checkpoint(str(path))["state_dict"]["w"], torch.zeros(2))


def test_a_plain_pickle_is_refused_without_advice_to_run_its_code(tmp_path):
    """A pickle written by pickle.dump (not torch.save) that would run code: refused, never with torch's advice to load it
    with weights_only=False."""
    import pickle

    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": _RunsCode()}, f)
    with pytest.raises(CheckpointError, match="not a torch checkpoint of weights .*it was not loaded") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value) and "likely succeed" not in str(err.value)
    assert not os.path.exists("/nonexistent-dir-should-never-be-made/ran")


@pytest.mark.slow
def test_the_checksum_does_not_depend_on_the_hash_seed():
    """A set has no order of its own: its members' digests are sorted, so another PYTHONHASHSEED gives the same checksum."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import importlib.util as u, sys; spec = u.spec_from_file_location('io_alone', sys.argv[1]); m = u.module_from_spec(spec); "
            "spec.loader.exec_module(m); print(m.checksum({'s': {'alpha', 'beta', 'gamma', 'delta', 'epsilon'}}))")
    path = os.path.join(repo, "inference", "io.py")  # the module alone (it imports only torch): a quick subprocess
    runs = [subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed})
            for seed in ("1", "2")]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert len({r.stdout for r in runs}) == 1
