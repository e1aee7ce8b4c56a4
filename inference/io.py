"""Files that must never be half-written or unsafely read: checkpoints and results.

Every write goes to a temporary file in the target's folder, is flushed to
disk, then atomically renamed over the target, so a killed run leaves either
the old file or the new one. Checkpoints are read with
``torch.load(..., weights_only=True)``; anything unreadable raises
:class:`CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not one of ours."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _finite_or_none(obj: Any) -> Any:
    """Strict JSON has no NaN or infinity: write those as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON (non-finite floats become null), atomically."""
    atomic_write_text(path, json.dumps(_finite_or_none(obj), indent=2, allow_nan=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", required: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` if it cannot be trusted."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path!r}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(
            f"cannot read checkpoint {path!r}: the file is truncated, corrupt or not a torch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(checkpoint).__name__}, not a dict")
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} was not written by this toolkit: it lacks {', '.join(map(repr, missing))}")
    return checkpoint
