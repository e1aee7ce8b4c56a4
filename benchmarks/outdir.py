"""An output folder owned by one run: checked before any work, locked, fresh or resumed, never a mix.

Every benchmark opens its ``--out`` with :class:`OutputFolder` before it loads data or trains:

* **writable first** — a folder that is a file, or cannot be written, is refused at once, not
  after hours of evaluation;
* **one run at a time** — a lock file ``.lock`` records the owner's pid, host, start time and
  command; a second run into the folder is refused naming the owner, and the lock of a run
  that was killed (its pid is gone on this host) is taken over with a note;
* **fresh or resumed** — an earlier run's results (and, for a training run, its checkpoints
  and logs) are continued with ``--resume``, replaced with ``--overwrite`` (removed before
  any work), or the run is refused: a folder never holds one run's results beside another's
  checkpoint;
* **no debris** — temporary files of an atomic write interrupted by a kill (``.NAME.*.tmp``)
  are removed;
* **results last** — :meth:`OutputFolder.write` prints the table to the terminal first, then
  writes each file atomically, and if a write fails (disk full) says which files were kept.

A Ctrl-C is reported by :func:`interrupted_message`, which says what the folder kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from inference.io import atomic_write_json, atomic_write_text

LOCK_NAME = ".lock"
#: Temporary files of inference.io's atomic writes: ".<name>.<random>.tmp".
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


class OutputFolderError(ValueError):
    """The output folder cannot be used by this run (a file, unwritable, locked, or holding another run)."""


def _is_launched_rank() -> bool:
    """A process that Lightning's DDP launcher started for a rank other than 0: the launching process owns the folder."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("LOCAL_RANK", "RANK", "NODE_RANK"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class OutputFolder:
    """The ``--out`` folder of one run (a context manager: the lock is held inside ``with``).

    ``results`` are the files this command writes at the end; ``state`` the files and
    folders a training run writes as it goes (checkpoints, logs). ``trains`` says whether
    this run writes ``state`` (an evaluation of a given checkpoint does not).
    """

    def __init__(
        self, path: str, *, results: Sequence[str], state: Sequence[str] = (), trains: bool = True,
        resume: bool = False, overwrite: bool = False,
    ):
        if resume and overwrite:
            raise OutputFolderError("--resume continues the run in --out and --overwrite replaces it: give one of them")
        self.path, self.results, self.state = path, tuple(results), tuple(state)
        self.trains, self.resume, self.overwrite = trains, resume, overwrite
        self.lock_path = os.path.join(path, LOCK_NAME)
        self._token: str | None = None
        self.notes: list[str] = []  #: what opening the folder did (a stale lock taken over, debris removed)

    # -- opening -------------------------------------------------------------------------------------------------
    def __enter__(self) -> OutputFolder:
        self._check_writable()
        if _is_launched_rank():
            return self
        self._lock()
        try:
            self._remove_debris()
            self._check_earlier_run()
        except BaseException:
            self._unlock()
            raise
        for note in self.notes:
            print(note, file=sys.stderr)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._unlock()

    def _check_writable(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise OutputFolderError(f"--out {self.path!r} is a file, not a folder: choose a folder for the results")
        try:
            os.makedirs(self.path, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-check.", suffix=".tmp"):
                pass
        except OSError as err:
            raise OutputFolderError(f"--out {self.path!r} cannot be written ({err.strerror or err}): nothing was run") from None

    def _lock(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self._token = json.dumps(record)
            return
        raise OutputFolderError(f"--out {self.path!r}: could not take its lock {self.lock_path!r}")

    def _take_over_if_stale(self) -> None:
        try:
            with open(self.lock_path) as f:
                owner = json.load(f)
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = {}, None, None
        if pid is not None and host == socket.gethostname() and not _pid_alive(pid):
            self.notes.append(f"note: --out {self.path!r} was locked by pid {pid}, which no longer runs (killed?); taking it over")
            os.unlink(self.lock_path)
            return
        if pid is None:
            raise OutputFolderError(f"--out {self.path!r} has an unreadable lock file {self.lock_path!r}; if no run uses the folder, delete it")
        where = "this machine" if host == socket.gethostname() else f"host {host!r} (cannot be checked from here)"
        raise OutputFolderError(
            f"--out {self.path!r} is in use by another run: pid {pid} on {where}, started {owner.get('started')}, "
            f"command: {owner.get('command')}. Wait for it or choose another --out; if that run is dead, delete {self.lock_path!r}"
        )

    def _unlock(self) -> None:
        if self._token is None:
            return
        try:
            with open(self.lock_path) as f:
                if f.read() == self._token:
                    os.unlink(self.lock_path)
        except OSError:
            pass
        self._token = None

    def _remove_debris(self) -> None:
        removed = []
        for folder, _, files in os.walk(self.path):
            for name in files:
                if _TEMPORARY.match(name) and not name.startswith(".write-check."):
                    os.unlink(os.path.join(folder, name))
                    removed.append(os.path.relpath(os.path.join(folder, name), self.path))
        if removed:
            self.notes.append(f"note: removed {len(removed)} temporary file(s) left by an interrupted write: {', '.join(sorted(removed))}")

    def earlier(self) -> list[str]:
        """The files and folders of an earlier run that this run would mix with."""
        names = self.results + (self.state if self.trains else ())
        return [n for n in names if os.path.exists(os.path.join(self.path, n))]

    def _check_earlier_run(self) -> None:
        earlier = self.earlier()
        if not earlier or self.resume:
            return
        if not self.overwrite:
            resume = "pass --resume to continue it, " if self.state else ""
            raise OutputFolderError(
                f"--out {self.path!r} holds an earlier run ({', '.join(earlier)}): {resume}--overwrite to replace it, "
                "or choose another --out (a folder never mixes two runs' files)"
            )
        for name in earlier:
            target = os.path.join(self.path, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.unlink(target)
        self.notes.append(f"note: --overwrite removed the earlier run's {', '.join(earlier)}")

    # -- results -------------------------------------------------------------------------------------------------
    def write(self, table: str, files: dict[str, Any | Callable[[str], None]]) -> list[str]:
        """Print ``table``, then write each file (a JSON object, a string, or a function of the path); returns the paths.

        A file that cannot be written (disk full) does not stop the others; the error then
        names what was written and what was not, with the table already on the terminal.
        """
        print(table)
        written, failed = [], []
        for name, content in files.items():
            path = os.path.join(self.path, name)
            try:
                if callable(content):
                    content(path)
                elif isinstance(content, str):
                    atomic_write_text(path, content)
                else:
                    atomic_write_json(path, content)
                written.append(path)
            except OSError as err:
                failed.append(f"{name} ({err.strerror or err})")
        if failed:
            kept = f"; written: {', '.join(os.path.basename(p) for p in written)}" if written else ""
            raise OSError(f"could not write {', '.join(failed)} into {self.path!r}{kept}. The results are the table printed above")
        return written


def interrupted_message(out: str | None) -> str:
    """What an interrupted run left in ``out`` and how to continue it."""
    if not out or not os.path.isdir(out):
        return "interrupted: nothing was written"
    checkpoint = os.path.join(out, "checkpoints", "last.ckpt")
    runs = os.path.join(out, "runs")
    if os.path.exists(checkpoint):
        return (f"interrupted: the last finished epoch's checkpoint is kept at {checkpoint}; run the same command with "
                "--resume to continue from it")
    if os.path.isdir(runs) and os.listdir(runs):
        return f"interrupted: the finished runs are kept in {runs}; run the same command with --resume to reuse them"
    return f"interrupted: no checkpoint was written yet in {out!r}; nothing to resume"
