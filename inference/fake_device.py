"""A second device simulated on the CPU, so that device bugs are caught before the code ever runs on a GPU.

On a GPU, a tensor made without ``device=`` lives on the host; mixing it into an operation with device
tensors fails (``Expected all tensors to be on the same device``), or, for a result written back, leaves
an output on the wrong device. None of this shows on a CPU, where every tensor is on the one device.
The first GPU run of this toolkit failed 8 of its 10 checks on one such bug.

:class:`FakeDevice` is a ``TorchFunctionMode`` that keeps the values on the CPU but tracks which tensors
would live on the device:

* the tensors passed to :meth:`FakeDevice.to_device` (the data, the model's parameters and buffers) are on
  the device, and so is every result of an operation with an input on it;
* a device tensor's ``.device`` answers a stand-in device (``meta``), so code that creates or moves
  tensors with ``device=x.device`` / ``.to(x.device)`` puts them on the device; a factory call without
  ``device=`` (``torch.zeros(n)``), ``torch.from_numpy`` or ``.cpu()`` gives a host tensor;
* an operation whose inputs mix device tensors with host tensors of one or more dimensions (a host
  scalar is allowed, as CUDA allows it) is recorded in :attr:`FakeDevice.violations` with its stack;
  index tensors of an indexing operation may stay on the host, as they may on a GPU.

What it cannot see: kernels that exist for one device only, nondeterminism, memory. Tracking is by
storage, so views, ``nn.Parameter`` wrappers and in-place results share their tensor's place.
"""

from __future__ import annotations

import traceback
import weakref
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

#: What a device tensor's ``.device`` answers: the stand-in for a GPU that code passes on to ``device=`` and ``.to()``.
STAND_IN = torch.device("meta")
_DEVICE_PROPERTY = torch.Tensor.device
_TO_HOST = {"cpu", "numpy", "tolist", "item"}
_INDEXING = {"__getitem__", "__setitem__", "index_select", "index_put_", "index_put", "take"}
_MOVES = {"to", "copy_", "_to_copy", "type"}


class Violation(NamedTuple):
    """An operation that mixed device tensors with host tensors."""

    op: str
    host_shape: tuple[int, ...]  #: the shape of the first host tensor among its inputs
    stack: str


def _real(arg: Any) -> Any:
    return torch.device("cpu") if isinstance(arg, torch.device) and arg == STAND_IN else arg


class FakeDevice(TorchFunctionMode):
    """``with FakeDevice() as fake: fake.to_device(x, *model.parameters()); out = f(x)``; then ``fake.violations`` and
    ``fake.on_device(t)`` for every tensor ``f`` returned."""

    def __init__(self, stack_depth: int = 14):
        super().__init__()
        self._storages: set[int] = set()
        self.violations: list[Violation] = []
        self.stack_depth = stack_depth

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()  # Python keeps one object per storage: it dies with the storage
        key = id(storage)
        if key not in self._storages:
            self._storages.add(key)
            weakref.finalize(storage, self._storages.discard, key)

    def to_device(self, *tensors: torch.Tensor) -> None:
        """Place ``tensors`` on the simulated device (as ``.to("cuda")`` would)."""
        for t in tensors:
            if t.numel():
                self._add(t)

    def on_device(self, t: torch.Tensor) -> bool:
        """Whether ``t`` would live on the device (an empty tensor is anywhere)."""
        return t.numel() == 0 or id(t.untyped_storage()) in self._storages

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) is _DEVICE_PROPERTY:
            return STAND_IN if self.on_device(args[0]) else torch.device("cpu")
        name = getattr(func, "__name__", str(func))
        asked = any(isinstance(a, torch.device) and a == STAND_IN for a in tree_flatten((args, kwargs))[0])
        if asked:  # created on, or moved to, the device: computed on the CPU, then placed there
            args, kwargs = tree_map(_real, args), tree_map(_real, kwargs)
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        placed = [t for t in tensors if t.numel() and self.on_device(t)]
        if placed and name not in _MOVES:
            checked = tensors
            if name in _INDEXING:  # index tensors may stay on the host; the indexed tensor and the values may not
                checked = [args[0]] + ([args[2]] if name == "__setitem__" and isinstance(args[2], torch.Tensor) else [])
            host = [t for t in checked if t.dim() > 0 and not self.on_device(t)]
            if host:
                stack = "".join(traceback.format_stack(limit=self.stack_depth)[:-1])
                self.violations.append(Violation(name, tuple(host[0].shape), stack))
        out = func(*args, **kwargs)
        explicit_host = name == "to" and any(str(a) == "cpu" for a in list(args[1:]) + list(kwargs.values()))
        if not asked and (name in _TO_HOST or explicit_host):
            if isinstance(out, torch.Tensor) and any(out.untyped_storage() is t.untyped_storage() for t in placed):
                out = out.clone()  # a device tensor's host copy is a new tensor (here .cpu() would return the tensor itself)
            return out
        if placed or asked:
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor) and o.numel():
                    self._add(o)
        return out


def off_device(fake: FakeDevice, result: Any, path: str = "result") -> list[str]:
    """The paths of every tensor in ``result`` (nested named tuples, dicts, lists, dataclass-like objects) not on ``fake``'s device."""
    if isinstance(result, torch.Tensor):
        return [] if fake.on_device(result) else [f"{path} {tuple(result.shape)}"]
    if hasattr(result, "_fields"):
        return [p for f in result._fields for p in off_device(fake, getattr(result, f), f"{path}.{f}")]
    if isinstance(result, dict):
        return [p for k, v in result.items() for p in off_device(fake, v, f"{path}[{k!r}]")]
    if isinstance(result, (list, tuple)):
        return [p for i, v in enumerate(result) for p in off_device(fake, v, f"{path}[{i}]")]
    if hasattr(result, "__dataclass_fields__"):
        return [p for f in result.__dataclass_fields__ for p in off_device(fake, getattr(result, f), f"{path}.{f}")]
    return []
