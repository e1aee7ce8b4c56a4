"""The memory budget of the vectorized estimators: how many samples one chunk may hold.

Every estimator draws its samples in chunks so that K = 5000 samples (or 100 AIS
chains) for many datapoints fit in memory; ``max_elements`` bounds the tensor
elements one chunk may create, and :func:`chunk_size_for` turns it into a number
of samples for a given program pair. Left unset (``None``), it is
:func:`default_max_elements` of the data's device: :data:`MAX_ELEMENTS` on a CPU, a share
of the free memory on a GPU. A chunk that still runs out of device memory is halved
and tried again (:func:`halve_after_oom`), with a log line, rather than ending the evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from .program import Program, ProgramInfo, trace_pair
from .validation import positive_int

#: Default bound on the number of float32 elements one chunk of samples may create.
MAX_ELEMENTS = 2**26
#: A request projected (from its first chunk) to run longer than this is refused with the estimate; raise it for longer runs.
MAX_PROJECTED_SECONDS = 24 * 3600.0
#: Share of a GPU's free memory (at the time of the call) that the default budget lets one chunk take.
DEVICE_MEMORY_SHARE = 0.5

log = logging.getLogger("inference.memory")
T = TypeVar("T")


def default_max_elements(device: torch.device | str | None = None) -> int:
    """The default ``max_elements`` on ``device``: :data:`MAX_ELEMENTS` on a CPU; on a GPU the float32 elements that
    :data:`DEVICE_MEMORY_SHARE` of its free memory holds, rounded down to a power of two (never less than
    :data:`MAX_ELEMENTS` / 16). The rounding keeps the chunks, and so the float rounding of the numbers, the same from
    run to run on one card unless its free memory crosses a power of two; pass ``max_elements`` for chunks that never
    change."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        return MAX_ELEMENTS
    free, _ = torch.cuda.mem_get_info(device)
    elements = int(free * DEVICE_MEMORY_SHARE) // 4
    return max(MAX_ELEMENTS // 16, 1 << (elements.bit_length() - 1) if elements > 0 else 0)


def resolve_max_elements(max_elements: int | None, device: torch.device | str | None = None) -> int:
    """``max_elements`` checked, or the device's default (:func:`default_max_elements`) when it is None."""
    return default_max_elements(device) if max_elements is None else positive_int(max_elements, "max_elements")


def halve_after_oom(size: int, what: str) -> int:
    """The chunk size to retry with after a chunk of ``size`` ran out of device memory: half of it, logged.

    Raises a ``MemoryError`` when even one sample (or datapoint) does not fit.
    """
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if size <= 1:
        raise MemoryError(f"{what}: out of device memory with chunks of a single element; free memory on the device or evaluate fewer datapoints at once")
    half = size // 2
    log.warning("%s: out of device memory with chunks of %d; retrying with %d (pass a smaller max_elements to start there)", what, size, half)
    return half


def chunk_size_for(info: ProgramInfo, x: torch.Tensor, model: Program, guide: Program, max_elements: int | None) -> int:
    """How many samples fit in one chunk: ``max_elements`` (None: the default of ``x``'s device) over a generous
    per-sample footprint.

    The footprint counts every sample-site value and distribution parameter of one
    vectorized sample (the decoder's output is among them) times 8 for intermediates.
    """
    max_elements = resolve_max_elements(max_elements, x.device)
    with torch.no_grad():
        model_trace, guide_trace = trace_pair(model, guide, x)
    per_sample = 0
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                per_sample += site["value"].numel()
                fn = site["fn"]
                while hasattr(fn, "base_dist"):
                    fn = fn.base_dist
                per_sample += sum(v.numel() for v in vars(fn).values() if isinstance(v, torch.Tensor))
    return max(1, max_elements // (8 * max(per_sample, 1)))


def chunks(total: int, size: int, work: Callable[[int, int], T], what: str) -> Iterator[tuple[int, T]]:
    """``work(start, n)`` over consecutive chunks of at most ``size`` of ``total`` items: yields ``(n, result)``.

    A chunk that runs out of device memory is run again at half the size, and so is every later chunk
    (:func:`halve_after_oom`: a log line; a ``MemoryError`` when one item does not fit).
    """
    start = 0
    while start < total:
        n = min(size, total - start)
        try:
            result = work(start, n)
        except torch.OutOfMemoryError:
            size = halve_after_oom(n, what)
            continue
        yield n, result
        start += n


def check_projected_time(first_seconds: float, first: int, total: int, num_points: int, what: str) -> None:
    """Refuse a request of ``total`` samples whose time, projected from its first chunk of ``first`` samples, exceeds
    :data:`MAX_PROJECTED_SECONDS`; the message gives the estimate."""
    projected = first_seconds * total / first
    if projected > MAX_PROJECTED_SECONDS:
        raise ValueError(
            f"{what} with num_samples={total} for {num_points} datapoint(s) would take about {projected / 3600:.3g} h: its first "
            f"chunk of {first} samples took {first_seconds:.3g} s. That is beyond inference.memory.MAX_PROJECTED_SECONDS "
            f"({MAX_PROJECTED_SECONDS / 3600:.3g} h): lower num_samples, or raise that limit for a run this long"
        )
