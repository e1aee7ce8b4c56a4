"""A count of the host-device synchronizations a piece of code would cause on a GPU, measured on the CPU.

Every way a tensor's value reaches Python (``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``,
``.tolist()``, indexing a list with a tensor) goes through ``aten._local_scalar_dense`` or
``aten.is_nonzero``; on a GPU each of them waits for the device. Counting them under a dispatch mode on
the CPU catches a new synchronization in a hot loop before the code ever runs on a GPU.
"""

from torch.utils._python_dispatch import TorchDispatchMode

#: The ops that copy a tensor's value to the host and wait for it.
SYNC_OPS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.equal")


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as syncs: ...``; then ``syncs.count`` and ``syncs.ops`` (op name -> count)."""

    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}

    @property
    def count(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        if any(name.startswith(op) for op in SYNC_OPS):
            self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))
