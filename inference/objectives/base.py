"""What the per-datapoint sampled objectives (importance-weighted, wake-sleep) share: K, N, the pair's layout, no warm-up."""

from __future__ import annotations

import torch
from torch import nn

from ..program import ProgramInfo, inspect_without_randomness
from ..validation import positive_int


class SampledLoss(nn.Module):
    """A loss that draws ``num_particles`` = K samples per datapoint; the pair is inspected on the first batch.

    These objectives are not an ELBO with a KL term, so KL warm-up does not apply to them.
    """

    def __init__(self, model: nn.Module, guide: nn.Module, num_particles: int, name: str):
        super().__init__()
        self.model, self.guide = model, guide
        self.num_particles, self.name = positive_int(num_particles, f"objective {name!r}: K = num_particles"), name
        self.dataset_size: int | None = None  #: N, set by the trainer: the global factor counts B/N per batch
        self._info: ProgramInfo | None = None

    def set_latent_scale(self, beta: float) -> None:
        if beta != 1.0:
            raise ValueError(f"objective {self.name!r} is not an ELBO with a KL term; KL warm-up does not apply (set kl_warmup_epochs=0)")

    def info(self, x: torch.Tensor) -> ProgramInfo:
        """The pair's layout, learned on the first batch without drawing from the caller's random stream."""
        if self._info is None:
            self._info = inspect_without_randomness(self.model, self.guide, x)
        return self._info
