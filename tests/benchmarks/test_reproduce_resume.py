"""An interrupted gap evaluation of the reproduction resumes from its saved blocks of points with the numbers of an uninterrupted run."""

import json
import os

import pytest

import benchmarks.reproduce.runner as runner
from benchmarks import reproduce
from tests.benchmarks.test_gaps_distributed import _floats

RUN_ONLY = ("seconds", "compute_seconds", "versions", "command")  #: what may differ between two runs of one experiment


class Killed(Exception):
    """Stands for the process being killed."""


def _run(out, streams: str, *extra: str) -> int:
    return reproduce.cli(["gaps-by-family", "--budget", "tiny", "--out", str(out), "--streams", streams, "--no-progress", *extra])


def _counting(monkeypatch, kill_at: int | None = None) -> list:
    """Count the blocks ``gap_decomposition`` evaluates (their first point); raise :class:`Killed` at call ``kill_at``."""
    calls, original = [], runner.gap_decomposition

    def decomposition(model, guide, x, **kwargs):
        calls.append(len(x))
        if kill_at is not None and len(calls) == kill_at:
            raise Killed
        return original(model, guide, x, **kwargs)

    monkeypatch.setattr(runner, "gap_decomposition", decomposition)
    return calls


def _numbers(out) -> list:
    with open(os.path.join(out, "gaps-by-family.json")) as f:
        record = json.load(f)
    for key in RUN_ONLY:
        record.pop(key)
    return record


@pytest.mark.slow
@pytest.mark.parametrize("streams", ["global", "keyed"])
def test_an_interrupted_evaluation_resumes_from_its_blocks_with_the_numbers_of_an_uninterrupted_run(tmp_path, monkeypatch, capsys, streams):
    whole = _counting(monkeypatch)
    assert _run(tmp_path / "whole", streams) == 0
    # 4 evaluations (2 models x 2 splits) of 4 points each in blocks of 2: 8 blocks
    assert whole == [2] * 8
    assert not os.path.exists(tmp_path / "whole" / "evals" / "partial")  # finished evaluations keep no blocks

    _counting(monkeypatch, kill_at=4)  # killed in the second block of the second evaluation
    with pytest.raises(Killed):
        _run(tmp_path / "cut", streams)
    (kept,) = (tmp_path / "cut" / "evals" / "partial").iterdir()
    assert [f.name for f in kept.iterdir()] == ["000000-000002.pt"]
    assert _run(tmp_path / "cut", streams) == 2  # without --resume an interrupted evaluation is refused, by name
    assert "interrupted with 1 of 2 block(s)" in capsys.readouterr().err

    resumed = _counting(monkeypatch)
    assert _run(tmp_path / "cut", streams, "--resume") == 0
    assert resumed == [2] * 5  # the finished evaluation and block are not evaluated again
    assert "1 finished block(s) of points reused" in capsys.readouterr().err
    one, two = _numbers(tmp_path / "whole"), _numbers(tmp_path / "cut")
    pairs = [(p, x, y) for p, x, y in _floats(one, two) if not p.endswith("seconds")]
    assert len(pairs) > 100 and all(x == y for _, x, y in pairs), [(p, x, y) for p, x, y in pairs if x != y][:5]
    assert not os.path.exists(tmp_path / "cut" / "evals" / "partial")


@pytest.mark.slow
def test_a_block_saved_under_other_settings_is_evaluated_again(tmp_path, monkeypatch, capsys):
    _counting(monkeypatch, kill_at=2)
    with pytest.raises(Killed):
        _run(tmp_path, "global")
    (kept,) = (tmp_path / "evals" / "partial").iterdir()
    # the same evaluation's name, another fingerprint: as if its configuration had changed under the same folder
    (block,) = kept.iterdir()
    state = runner.load_checkpoint(block)
    state["fingerprint"] = "another"
    state.pop("checksum", None)
    runner.atomic_torch_save(state, str(block))
    calls = _counting(monkeypatch)
    assert _run(tmp_path, "global", "--resume") == 0
    assert "holds a block of another evaluation" in capsys.readouterr().err
    assert calls == [2] * 8
