"""An output folder owned by one run: checked before any work, locked, fresh or resumed, never a mix.

Every benchmark opens its ``--out`` with :class:`OutputFolder` before it loads data or trains:

* **writable first** — a folder that is a file, or cannot be written, is refused at once, not
  after hours of evaluation;
* **one run at a time** — the run holds an exclusive ``flock`` on ``.lock``, which records
  its pid, host, start time and command; a second run into the folder is refused naming the
  owner. The kernel drops a killed run's ``flock`` with the process, so its leftover record
  is taken over with a note (POSIX systems: ``fcntl``);
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

import fcntl
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

from inference.io import atomic_write_json, atomic_write_text, load_checkpoint

LOCK_NAME = ".lock"
#: Temporary files of inference.io's atomic writes: ".<name>.<random>.tmp".
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


class OutputFolderError(ValueError):
    """The output folder cannot be used by this run (a file, unwritable, locked, or holding another run)."""


def _is_launched_rank() -> bool:
    """A process that Lightning's DDP launcher started for a rank other than 0: the launching process owns the folder."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"))


def _read_record(fd: int) -> Any:
    """The owner's record in a lock file: a dict, None for an empty file, or "unreadable"."""
    try:
        text = os.pread(fd, 65536, 0).decode()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return "unreadable"


class OutputFolder:
    """The ``--out`` folder of one run (a context manager: the lock is held inside ``with``).

    ``results`` are the files this command writes at the end; ``state`` the files and
    folders a training run writes as it goes (checkpoints, logs). ``trains`` says whether
    this run writes ``state`` (an evaluation of a given checkpoint does not); ``partial`` the
    files an evaluation writes as it goes, whether or not it trains (finished blocks of points).
    """

    def __init__(
        self, path: str, *, results: Sequence[str], state: Sequence[str] = (), trains: bool = True,
        resume: bool = False, overwrite: bool = False, partial: Sequence[str] = (),
    ):
        if resume and overwrite:
            raise OutputFolderError("--resume continues the run in --out and --overwrite replaces it: give one of them")
        self.path, self.results, self.state, self.partial = path, tuple(results), tuple(state), tuple(partial)
        self.trains, self.resume, self.overwrite = trains, resume, overwrite
        self.lock_path = os.path.join(path, LOCK_NAME)
        self._fd: int | None = None
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
        """Hold an exclusive ``flock`` on ``.lock`` for the whole run and write the owner's record into it.

        The kernel releases the ``flock`` when its process dies, however it dies, so a lock
        that can be taken belongs to nobody: a record found in it is a dead run's, taken over
        with a note. The lock is held on the file the path names (checked after locking, as a
        finishing owner unlinks it).
        """
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(sys.argv)})
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_record(fd)
                os.close(fd)
                raise self._busy(owner) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the owner finished and unlinked the file we locked: lock the current one
        previous = _read_record(fd)
        if previous:
            who = f"pid {previous.get('pid')} on {previous.get('host')!r}" if isinstance(previous, dict) else "an unknown run"
            self.notes.append(f"note: --out {self.path!r} was locked by {who}, which no longer holds it (killed?); taking it over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _busy(self, owner: Any) -> OutputFolderError:
        if not isinstance(owner, dict):
            return OutputFolderError(f"--out {self.path!r} is in use by another run (its lock {self.lock_path!r} is held)")
        where = "this machine" if owner.get("host") == socket.gethostname() else f"host {owner.get('host')!r}"
        return OutputFolderError(
            f"--out {self.path!r} is in use by another run: pid {owner.get('pid')} on {where}, started {owner.get('started')}, "
            f"command: {owner.get('command')}. Wait for it to finish, or choose another --out"
        )

    def _unlock(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.lock_path)  # while still holding it: a waiting run then locks a fresh file
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def _remove_debris(self) -> None:
        """Remove temporary files of interrupted atomic writes: in the folder itself and inside its state paths only."""
        candidates = [os.path.join(self.path, name) for name in os.listdir(self.path)]  # the folder itself, not below
        for name in self.state + self.partial:
            for folder, _, files in os.walk(os.path.join(self.path, name)):  # nothing when the state path is absent
                candidates += [os.path.join(folder, f) for f in files]
        removed = []
        for path in candidates:
            name = os.path.basename(path)
            if os.path.isfile(path) and _TEMPORARY.match(name) and not name.startswith(".write-check."):
                os.unlink(path)
                removed.append(os.path.relpath(path, self.path))
        if removed:
            self.notes.append(f"note: removed {len(removed)} temporary file(s) left by an interrupted write: {', '.join(sorted(removed))}")

    def earlier(self) -> list[str]:
        """The files and folders of an earlier run that this run would mix with."""
        names = self.results + (self.state if self.trains else ()) + self.partial
        return [n for n in names if os.path.exists(os.path.join(self.path, n))]

    def _check_earlier_run(self) -> None:
        earlier = self.earlier()
        if not earlier or self.resume:
            return
        if not self.overwrite:
            resume = "pass --resume to continue it, " if self.state or self.partial else ""
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
    partial = os.path.join(out, "partial")
    if os.path.isdir(partial) and os.listdir(partial):
        return (f"interrupted: {len(os.listdir(partial))} finished block(s) of points are kept in {partial}"
                + (" with the trained model's checkpoint" if os.path.exists(checkpoint) else "")
                + "; run the same command with --resume to evaluate only the rest")
    if os.path.exists(checkpoint):
        return (f"interrupted: the last finished epoch's checkpoint is kept at {checkpoint}; run the same command with "
                "--resume to continue from it")
    if os.path.isdir(runs) and os.listdir(runs):
        return f"interrupted: the finished runs are kept in {runs}; run the same command with --resume to reuse them"
    return f"interrupted: no checkpoint was written yet in {out!r}; nothing to resume (rerun with --overwrite, or another --out)"


def load_saved_block(path: str, fingerprint: str, required: tuple[str, ...] = ("fingerprint", "state")) -> dict[str, Any] | None:
    """The finished block of points an earlier run saved at ``path`` (a dict with at least ``required``); None if there is
    none. A block of another evaluation (other settings, or a model that a resumed training has changed since) is never
    mixed in: it is evaluated again, with a note."""
    if not os.path.exists(path):
        return None
    saved = load_checkpoint(path, required=required)
    if saved["fingerprint"] != fingerprint:
        print(f"note: {path} holds a block of another evaluation (other settings, or the model has trained since): "
              "evaluating it again", file=sys.stderr)
        return None
    return saved
