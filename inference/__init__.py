"""Inference for Pyro model/guide pairs that follow the package convention.

One concept per module:

* :mod:`inference.program` — the convention, checked; per-datapoint log weights;
* :mod:`inference.estimators` — per-datapoint ELBO and importance-weighted log p(x);
* :mod:`inference.local` — per-datapoint (local) optimal posteriors q*;
* :mod:`inference.gaps` — the approximation / amortization gap decomposition;
* :mod:`inference.objectives` — training objectives by name, KL warm-up;
* :mod:`inference.training` — SVI driven by PyTorch Lightning;
* :mod:`inference.io` — atomic writes and safe checkpoint reads.
"""

from .estimators import Estimate, elbo, log_likelihood
from .gaps import GapDecomposition, gap_decomposition
from .io import CheckpointError, load_checkpoint
from .local import AdamConfig, LocalFFG, StoppingRule, local_posterior, optimize_local
from .program import ConventionError, ProgramInfo, inspect_program, log_weights
from .training import TrainConfig, fit

__all__ = [
    "AdamConfig", "CheckpointError", "ConventionError", "Estimate", "GapDecomposition", "LocalFFG", "ProgramInfo",
    "StoppingRule", "TrainConfig", "elbo", "fit", "gap_decomposition", "inspect_program", "load_checkpoint",
    "local_posterior", "log_likelihood", "log_weights", "optimize_local",
]
