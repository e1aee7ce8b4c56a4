"""A count of the host-device synchronizations a piece of code causes, measurable on a CPU.

Every way a tensor's value reaches Python (``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``,
``.tolist()``, indexing a list with a tensor) goes through ``aten._local_scalar_dense`` or
``aten.is_nonzero``; on a GPU each of them waits for the device. :class:`HostSyncs` counts them under a
dispatch mode, so a new synchronization in a hot loop is caught on the CPU before the code ever runs on a
GPU (the tests do this). On a GPU, :func:`count_host_syncs` also counts what CUDA's own sync debug mode
reports (copies to the host, ``nonzero`` and the like, which no dispatch-level count sees).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: The ops that copy a tensor's value to the host and wait for it.
SYNC_OPS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.equal")


def _in_optimizer() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if _OPTIM_DIR in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


_OPTIM_DIR = os.path.join("torch", "optim", "")


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as syncs: ...``; then ``syncs.count`` and ``syncs.ops`` (op name -> count).

    ``optimizer_steps=False`` leaves out the reads of a CPU scalar inside ``torch.optim``: torch's optimizers keep their
    step counts on the host (unless ``capturable`` or ``fused``), where reading them never waits for a device.
    """

    def __init__(self, optimizer_steps: bool = True):
        super().__init__()
        self.ops: dict[str, int] = {}
        self.optimizer_steps = optimizer_steps

    @property
    def count(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        if any(name.startswith(op) for op in SYNC_OPS):
            host_scalar = args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu" and args[0].dim() == 0
            if self.optimizer_steps or not (host_scalar and _in_optimizer()):
                self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def count_host_syncs(fn: Callable[[], object], device: torch.device | str = "cpu") -> dict[str, int]:
    """Run ``fn()`` once and count its host reads: ``{"dispatch": n}``, plus ``{"cuda_debug": m}`` on a CUDA device
    (the warnings of ``torch.cuda.set_sync_debug_mode("warn")``)."""
    device = torch.device(device)
    counts: dict[str, int] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with HostSyncs() as syncs:
                    fn()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        counts["cuda_debug"] = sum("synchroniz" in str(w.message) for w in caught)
    else:
        with HostSyncs() as syncs:
            fn()
    counts["dispatch"] = syncs.count
    return counts
