"""Files that must never be half-written or unsafely read: checkpoints and results.

Every write goes to a temporary file in the target's folder, is flushed to
disk, then atomically renamed over the target, so a killed run leaves either
the old file or the new one. Checkpoints carry a SHA-256 checksum of their whole
content (every tensor's bytes, dtype and shape, and every other value), verified
on load, so flipped bits are caught rather than turned into shifted numbers.
Checkpoints are read with ``torch.load(..., weights_only=True)``; anything
unreadable, damaged or asking to run code raises :class:`CheckpointError` naming
the file and the problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import tempfile
import warnings
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


#: The key under which a checkpoint stores the checksum of everything else in it.
CHECKSUM_KEY = "sha256"


def _feed(digest, obj: Any) -> None:
    """Feed ``obj`` to ``digest`` in a canonical order: dicts by sorted key repr, tensors as dtype, shape and bytes."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        t = (t.to_dense() if t.layout != torch.strided else t).resolve_conj().resolve_neg().contiguous().reshape(-1)
        digest.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (set, frozenset)):  # no order of its own (it changes with PYTHONHASHSEED): sort the members' digests
        digest.update(f"S{len(obj)}".encode())
        for member in sorted(_digest_of(item) for item in obj):
            digest.update(member)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())


def _digest_of(obj: Any) -> bytes:
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.digest()


def checksum(obj: Any) -> str:
    """SHA-256 of ``obj`` (a checkpoint dict without its checksum): equal for a checkpoint and its faithful copy."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in obj.items() if k != CHECKSUM_KEY} if isinstance(obj, dict) else obj)
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically; a dict gets the :func:`checksum` of its content under :data:`CHECKSUM_KEY`."""
    if isinstance(obj, dict):
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: checksum(obj)}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _unreadable(path: str, err: Exception) -> CheckpointError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch's weights-only refusal opens with advice to load with weights_only=False, which would run the file's code:
    # keep only what it says about the file itself
    detail = [line for line in lines if "weights_only" not in line and "file an issue" not in line.lower()
              and not line.lower().startswith(("check the documentation", "weightsunpickler error"))]
    first = detail[0] if detail else (lines[0] if lines and "weights_only" not in lines[0] else "")
    return CheckpointError(
        f"cannot read checkpoint {path!r}: the file is truncated, corrupt or not a torch checkpoint of weights "
        f"({type(err).__name__}{': ' + first if first else ''}); it was not loaded"
    )


_UNVERIFIED_WARNED: set[str] = set()  #: checkpoints already warned about (one warning per file and process)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", required: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` if it cannot be trusted."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path!r}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        wanted = [line.strip() for line in str(err).splitlines() if "unsupported global" in line.lower()]
        if not wanted:
            raise _unreadable(path, err) from err
        raise CheckpointError(
            f"refused: the file {path!r} asks to run code when loaded, which a checkpoint of weights never does "
            f"({wanted[0]}); it was not written by this toolkit and was not loaded"
        ) from None
    except Exception as err:  # torch raises many types for damaged files
        raise _unreadable(path, err) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(checkpoint).__name__}, not a dict")
    stored = checkpoint.get(CHECKSUM_KEY)
    if stored is None:
        if os.path.abspath(path) not in _UNVERIFIED_WARNED:  # a command that reads a file twice says it once
            _UNVERIFIED_WARNED.add(os.path.abspath(path))
            warnings.warn(f"checkpoint {path!r} carries no checksum (written before checksums were added): it cannot be verified",
                          stacklevel=2)
    elif stored != checksum(checkpoint):
        raise CheckpointError(
            f"checkpoint {path!r} is damaged: its content does not match the checksum stored in it (flipped bits on disk or in "
            "a copy); it was not loaded. Use another copy, or retrain"
        )
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} was not written by this toolkit: it lacks {', '.join(map(repr, missing))}")
    return checkpoint
