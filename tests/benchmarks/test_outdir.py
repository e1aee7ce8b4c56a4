"""The output folder of a run: writable first, locked, fresh or resumed, no debris, results kept when a write fails."""

import json
import os
import socket
import subprocess
import sys

import pytest

from benchmarks.outdir import LOCK_NAME, OutputFolder, OutputFolderError, interrupted_message

RESULTS = ("gaps.json", "gaps.md")
STATE = ("checkpoints", "logs")


def folder(path, **kwargs):
    return OutputFolder(str(path), results=RESULTS, state=STATE, **kwargs)


def test_a_file_or_an_unwritable_path_is_refused_before_any_work(tmp_path):
    afile = tmp_path / "results.txt"
    afile.write_text("x")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        with folder(afile):
            pass
    with pytest.raises(OutputFolderError, match="cannot be written .*nothing was run"):
        with folder(afile / "sub"):  # a folder that cannot be made (also as root, unlike a read-only mode)
            pass


def test_a_second_run_is_refused_by_the_owners_pid_and_a_dead_owners_lock_is_taken_over(tmp_path, capsys):
    # a live run holding the folder, as OutputFolder holds it (an exclusive flock on .lock and its record), without
    # importing the toolkit so that the process starts in milliseconds
    holder = ("import fcntl, json, os, socket, sys, time\n"
              "fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR | os.O_CREAT, 0o644)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
              "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': 'now', 'command': 'held'}).encode())\n"
              "print('ready', flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "ready"
        with pytest.raises(OutputFolderError, match=f"in use by another run: pid {owner.pid} on this machine.*command: held"):
            with folder(tmp_path):
                pass
    finally:
        owner.kill()  # killed: no chance to clean up, its record stays in .lock
        owner.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == owner.pid
    with folder(tmp_path):  # the kernel dropped the dead owner's flock: its record is taken over
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(OutputFolderError, match=f"pid {os.getpid()}"):
            with folder(tmp_path):  # and now ours holds it
                pass
    assert f"was locked by pid {owner.pid} on {socket.gethostname()!r}, which no longer holds it" in capsys.readouterr().err
    assert not (tmp_path / LOCK_NAME).exists()  # released on exit


def test_an_earlier_run_is_resumed_replaced_or_refused_never_mixed(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("ckpt")
    (tmp_path / "gaps.json").write_text("{}")
    with pytest.raises(OutputFolderError, match="holds an earlier run \\(gaps.json, checkpoints\\): pass --resume .*--overwrite"):
        with folder(tmp_path):
            pass
    with folder(tmp_path, resume=True):
        assert (tmp_path / "gaps.json").exists()
    with folder(tmp_path, trains=False, overwrite=True):  # an evaluation replaces results only, never the checkpoints
        assert not (tmp_path / "gaps.json").exists() and (tmp_path / "checkpoints" / "last.ckpt").exists()
    with folder(tmp_path, trains=False):  # and may write beside a checkpoint, which its config names
        pass
    with folder(tmp_path, overwrite=True):
        assert not (tmp_path / "checkpoints").exists()
    assert "--overwrite removed the earlier run's checkpoints" in capsys.readouterr().err
    with pytest.raises(OutputFolderError, match="give one of them"):
        folder(tmp_path, resume=True, overwrite=True)


def test_temporary_files_of_an_interrupted_write_are_removed(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    debris = tmp_path / "checkpoints" / ".last.ckpt.k2j4_x9.tmp"
    debris.write_bytes(b"half")
    keep = tmp_path / "checkpoints" / "notes.tmp"  # not one of ours
    keep.write_text("mine")
    with folder(tmp_path, resume=True):
        assert not debris.exists() and keep.exists()
    assert "removed 1 temporary file(s) left by an interrupted write: checkpoints/.last.ckpt.k2j4_x9.tmp" in capsys.readouterr().err


def test_a_failed_write_keeps_the_other_files_and_the_printed_table(tmp_path, capsys):
    with folder(tmp_path) as out:
        (tmp_path / "gaps.json").mkdir()  # the rename onto it fails, as a full disk would fail the write
        with pytest.raises(OSError, match="could not write gaps.json .*written: gaps.md. The results are the table printed above"):
            out.write("| the table |", {"gaps.json": {"a": 1}, "gaps.md": "| the table |"})
    assert "| the table |" in capsys.readouterr().out
    assert (tmp_path / "gaps.md").read_text() == "| the table |"


def test_the_interruption_message_says_what_was_kept(tmp_path):
    assert interrupted_message(str(tmp_path / "none")) == "interrupted: nothing was written"
    assert "no checkpoint was written yet" in interrupted_message(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    assert "checkpoint is kept at" in interrupted_message(str(tmp_path)) and "--resume" in interrupted_message(str(tmp_path))


@pytest.mark.slow
def test_the_commands_refuse_an_out_that_is_a_file_and_name_bad_lists(tmp_path, capsys):
    from benchmarks import compare, gaps, mixture, speed

    afile = tmp_path / "a-file"
    afile.write_text("x")
    for command in (gaps, compare, mixture, speed):
        assert command.cli(["--out", str(afile)]) == 2
        assert f"error: --out {str(afile)!r} is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        mixture.cli(["--components", "abc"])
    assert exit_info.value.code == 2
    assert "argument --components: must be comma-separated integers, got 'abc'" in capsys.readouterr().err
