"""The memory budget of the vectorized estimators: how many samples one chunk may hold.

Every estimator draws its samples in chunks so that K = 5000 samples (or 100 AIS
chains) for many datapoints fit in memory; :data:`MAX_ELEMENTS` bounds the tensor
elements one chunk may create, and :func:`chunk_size_for` turns it into a number
of samples for a given program pair.
"""

from __future__ import annotations

import torch

from .program import Program, ProgramInfo, trace_pair

#: Default bound on the number of float32 elements one chunk of samples may create.
MAX_ELEMENTS = 2**26


def chunk_size_for(info: ProgramInfo, x: torch.Tensor, model: Program, guide: Program, max_elements: int) -> int:
    """How many samples fit in one chunk: ``max_elements`` over a generous per-sample footprint.

    The footprint counts every sample-site value and distribution parameter of one
    vectorized sample (the decoder's output is among them) times 8 for intermediates.
    """
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


def chunks(total: int, size: int):
    """Split ``total`` samples into chunks of at most ``size``: yields each chunk's size."""
    done = 0
    while done < total:
        step = min(size, total - done)
        yield step
        done += step
