import json
import os

from inference.io import atomic_write_json, atomic_write_text


def test_atomic_writes_leave_no_temporary_files_and_write_strict_json(tmp_path):
    path = tmp_path / "sub" / "result.json"
    atomic_write_json(path, {"a": 1.5, "se": float("nan"), "nested": [float("inf"), 2]})
    with open(path) as f:
        assert json.load(f) == {"a": 1.5, "se": None, "nested": [None, 2]}
    atomic_write_text(path, "replaced")
    assert path.read_text() == "replaced"
    assert os.listdir(path.parent) == ["result.json"]
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # usual permissions, not mkstemp's
