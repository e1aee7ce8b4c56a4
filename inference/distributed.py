"""Evaluation sharded over the ranks of a torch.distributed group (the one ``torchrun`` or Lightning's DDP launcher starts).

* :func:`world` — this process's rank and the group's size (0 and 1 without a group);
* :func:`init_from_environment` — start the group a ``torchrun`` launch describes in its environment
  (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…), gloo on a CPU and NCCL on a GPU, unless one is running;
* :func:`eval_blocks` — the blocks of points an evaluation is done (and saved) in, each rank having one;
* :func:`rank_blocks` — the blocks a rank evaluates: r, r + W, r + 2W, …;
* :func:`gather_to_first` — every rank's result, in rank order, on rank 0 (:func:`gather_to_all`: on every rank);
* :func:`from_first` — rank 0's object on every rank; :func:`barrier` — wait for every rank;
* :func:`first_does` — work that rank 0 alone does (a training, an evaluation) while the others wait for it.

Waiting is done on the group's key-value store, polled, not inside a collective: a rank whose share
is done (or was saved before a ``--resume``) may wait hours for the slowest, or for rank 0's training,
and a collective would hit the group's timeout (NCCL aborts the job). Every collective here starts
only once every rank has reached it. A rank that fails says so in the store (:func:`report_failure`,
called by the command line), and the ranks waiting on it stop with :class:`PeerFailed`, naming it,
instead of hanging until a timeout; a rank that dies without a word (killed, out of memory) is found by its
heartbeat standing still (:func:`start_heartbeat`). The store's keys are per launch attempt, so a
``torchrun --max-restarts`` restart never reads the failed attempt's.

With the per-datapoint random numbers of :mod:`inference.streams`, a point's results do not depend
on which rank evaluated it, so a sharded run gives the numbers of one process.
"""

from __future__ import annotations

import datetime
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

#: A collective's time limit in the groups this module starts (and sets on Lightning's): every wait for another rank is
#: polled on the store first, so a collective itself only has to outlast the transfer.
TIMEOUT = datetime.timedelta(hours=12)
#: The longest sleep between two looks at the store while waiting for another rank.
POLL_SECONDS = 2.0
#: How often each rank of a group says it is alive (a background thread adds 1 to its counter in the store) ...
HEARTBEAT_SECONDS = 5.0
#: ... and how long a waiting rank lets another's counter stand still before it calls that rank dead (killed, out of
#: memory, its machine lost: gone without a word). Measured on the waiting rank's own clock, so machines' clocks may differ.
STALE_SECONDS = 120.0
_calls = itertools.count()  #: every rank makes the same calls in the same order, so the n-th call's keys agree
_heartbeat: threading.Thread | None = None
T = TypeVar("T")


def _prefix() -> str:
    """The store keys' prefix: one per launch attempt, since torchrun's store outlives a failed attempt that it restarts
    (``--max-restarts``), with the old attempt's keys in it."""
    run = os.environ.get("TORCHELASTIC_RUN_ID", "")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"latent-inference/{run}/{attempt}"


class PeerFailed(RuntimeError):
    """Another rank of the group failed while this one waited for it."""


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the running group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_world_size() -> int:
    """The ``WORLD_SIZE`` a launcher (``torchrun``) set, 1 without one."""
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {text!r}")
    return int(text)


def init_from_environment(device: torch.device) -> bool:
    """Join the group a launcher described in the environment (gloo on a CPU, NCCL on a GPU); True if one now runs.

    Nothing happens when the launch was for one process; a group that already runs (Lightning's DDP started it) gets
    :data:`TIMEOUT` as its collectives' time limit. On a GPU each rank takes the device ``LOCAL_RANK`` names
    (without it, its global rank modulo the devices it sees), and the group is bound to it."""
    if dist.is_initialized():
        if hasattr(dist, "set_timeout"):  # (torch >= 2.6) Lightning's groups have 30 minutes
            dist.set_timeout(TIMEOUT)
        start_heartbeat()
        return True
    if launched_world_size() == 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type != "cuda":
        dist.init_process_group("gloo", timeout=TIMEOUT)
        start_heartbeat()
        return True
    local = os.environ.get("LOCAL_RANK")
    index = int(local) if local is not None else int(os.environ.get("RANK", "0")) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    dist.init_process_group("nccl", timeout=TIMEOUT, device_id=torch.device("cuda", index))
    start_heartbeat()
    return True


def eval_blocks(n: int, size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """The blocks ``[lo, hi)`` of ``size`` points (the last shorter) that ``n`` points are evaluated in, ``size`` made
    small enough that each of ``world_size`` ranks has a block."""
    size = max(1, min(size, -(-n // world_size)))
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def rank_blocks(blocks: list[tuple[int, int]], rank: int, world_size: int) -> list[int]:
    """The indices of the ``blocks`` rank ``rank`` evaluates: r, r + W, r + 2W, … (round-robin)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a group of {world_size}")
    return list(range(rank, len(blocks), world_size))


def _store() -> Any:
    start_heartbeat()
    return dist.distributed_c10d._get_default_store()


def start_heartbeat() -> None:
    """Start this rank's heartbeat (once; nothing without a group): a daemon thread that adds 1 to the rank's counter in
    the store every :data:`HEARTBEAT_SECONDS`, through the long work of training or evaluation alike, so that the ranks
    waiting on it can tell a slow rank from a dead one."""
    global _heartbeat
    rank, size = world()
    if size == 1 or (_heartbeat is not None and _heartbeat.is_alive()):
        return
    store, key = dist.distributed_c10d._get_default_store(), f"{_prefix()}/alive/{rank}"

    def beat() -> None:
        while True:
            try:
                store.add(key, 1)
            except Exception:  # the group is gone (the run ends, or the store's host failed): nothing left to tell
                return
            time.sleep(HEARTBEAT_SECONDS)

    _heartbeat = threading.Thread(target=beat, name="latent-inference-heartbeat", daemon=True)
    _heartbeat.start()


def _wait(ready: Callable[[], bool], what: str, verdict: str | None = None) -> None:
    """Poll the store until ``ready()``. Raise :class:`PeerFailed` as soon as a rank reports a failure, when a rank's
    heartbeat has stood still for :data:`STALE_SECONDS` (it died without a word), or after :data:`TIMEOUT`.

    With a ``verdict`` key every rank waiting at the same point reaches the same decision: the first to decide
    (go: every rank is here; or stop) writes it atomically, and the others follow it, so that no rank enters a
    collective that another has given up on."""
    store, delay, started = _store(), 0.005, time.monotonic()
    rank, size = world()
    failed = f"{_prefix()}/failed"
    seen: dict[int, tuple[int, float]] = {}  # rank -> (its counter, when this rank saw it change)
    while True:
        if ready():
            reason = None
            break
        if store.check([failed]):
            reason = f"stopped while waiting for {what}: {store.get(failed).decode(errors='replace')}"
            break
        now = time.monotonic()
        reason = None
        for other in range(size):
            alive = f"{_prefix()}/alive/{other}"
            if other == rank or not store.check([alive]):  # a rank that has not started its heartbeat yet is not judged
                continue
            count = store.add(alive, 0)
            if other not in seen or seen[other][0] != count:
                seen[other] = (count, now)
            elif now - seen[other][1] > STALE_SECONDS:
                reason = (f"stopped while waiting for {what}: rank {other} stopped answering (no heartbeat for "
                          f"{now - seen[other][1]:.0f} s: killed, out of memory, or its machine lost)")
        if reason is None and now - started > TIMEOUT.total_seconds():
            reason = f"stopped after waiting {TIMEOUT} for {what}"
        if reason is not None:
            break
        time.sleep(delay)
        delay = min(2 * delay, POLL_SECONDS)
    if verdict is not None:
        decided = store.compare_set(verdict, "", "go" if reason is None else "stop").decode()
        if decided == "go":
            return  # every rank is here (this one too): the collective that follows completes
        if reason is None:
            reason = f"stopped at {what}: another rank gave up waiting ({store.get(failed).decode(errors='replace') if store.check([failed]) else 'no reason given'})"
    if reason is not None:
        raise PeerFailed(reason)


def _all_here(what: str) -> None:
    """Return once every rank has reached its call of the same number (no collective, so no collective's time limit);
    if one gives up instead, every rank raises :class:`PeerFailed` (none is left in the collective that follows)."""
    rank, size = world()
    store, key = _store(), f"{_prefix()}/here/{next(_calls)}"
    store.add(key, 1)
    _wait(lambda: store.add(key, 0) >= size, what, verdict=f"{key}/verdict")


def report_failure(error: BaseException) -> None:
    """Tell the group this rank failed (``error``), so that ranks waiting on it stop (nothing without a group). The
    first failure reported is kept: a rank that stops because another failed does not hide the cause."""
    rank, size = world()
    if size > 1:
        try:
            store, failed = _store(), f"{_prefix()}/failed"
            if not store.check([failed]):
                store.set(failed, f"rank {rank} failed: {type(error).__name__}: {error}"[:2000])
        except Exception:  # the store may be gone with the failure: the group's own timeout remains
            pass


def first_does(what: str, work: Callable[[], T]) -> T | None:
    """``work()`` on rank 0 (its result; None on the others), every other rank waiting until it is done.

    The others poll the store rather than wait in a collective, so work of any length never meets the group's
    timeout; if rank 0's ``work`` raises, they raise :class:`PeerFailed` naming it. ``what`` says what rank 0 does."""
    rank, size = world()
    if size == 1:
        return work()
    store, key = _store(), f"{_prefix()}/first/{next(_calls)}"
    if rank == 0:
        try:
            result = work()
        except BaseException as err:
            store.set(key, f"failed: {type(err).__name__}: {err}"[:2000])
            raise
        store.set(key, "done")
        return result
    _wait(lambda: store.check([key]), f"rank 0 ({what})")
    status = store.get(key).decode(errors="replace")
    if status != "done":
        raise PeerFailed(f"rank 0 {status} while it {what}")
    return None


def gather_to_first(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order, on rank 0 (None on the others); ``[obj]`` without a group.

    Objects travel pickled (``gather_object``): move tensors to the CPU first."""
    rank, size = world()
    if size == 1:
        return [obj]
    _all_here("every rank's share")
    if dist.get_backend() == "nccl":  # gather_object is not supported over NCCL: all_gather_object is
        everything = gather_to_all(obj)
        return everything if rank == 0 else None
    out = [None] * size if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def gather_to_all(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank; ``[obj]`` without a group. Objects travel pickled: CPU tensors."""
    size = world()[1]
    if size == 1:
        return [obj]
    _all_here("every rank's share")
    everything: list[Any] = [None] * size
    dist.all_gather_object(everything, obj)
    return everything


def from_first(obj: Any) -> Any:
    """Rank 0's ``obj``, on every rank (what the others pass is ignored); ``obj`` itself without a group."""
    if world()[1] == 1:
        return obj
    _all_here("rank 0")
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank, for as long as it takes (nothing without a group)."""
    if world()[1] > 1:
        _all_here("every rank")
