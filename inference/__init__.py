"""Inference for Pyro model/guide pairs that follow the package convention.

One concept per module:

* :mod:`inference.program` — the convention, checked; per-datapoint log weights;
* :mod:`inference.estimators` — per-datapoint ELBO and importance-weighted log p(x);
* :mod:`inference.enumeration` — exact log p(x) and ELBO for few discrete latents;
* :mod:`inference.families` — per-datapoint variational families (FFG, full, flows, discrete);
* :mod:`inference.local` — per-datapoint (local) optimal posteriors q*;
* :mod:`inference.gaps` — the approximation / amortization gap decomposition;
* :mod:`inference.objectives` — training objectives by name, KL warm-up;
* :mod:`inference.training` — SVI driven by PyTorch Lightning;
* :mod:`inference.io` — atomic writes and safe checkpoint reads.
"""

from .enumeration import exact_elbo, exact_log_marginal
from .estimators import Estimate, elbo, log_likelihood
from .families import LOCAL_FAMILIES, FlowOptions, LocalGuide
from .gaps import GapDecomposition, gap_decomposition
from .io import CheckpointError, load_checkpoint
from .local import AdamConfig, StoppingRule, local_posterior, optimize_local
from .program import ConventionError, ProgramInfo, inspect_program, log_weights
from .training import TrainConfig, fit

__all__ = [
    "AdamConfig", "CheckpointError", "ConventionError", "Estimate", "FlowOptions", "GapDecomposition", "LOCAL_FAMILIES",
    "LocalGuide", "ProgramInfo", "StoppingRule", "TrainConfig", "elbo", "exact_elbo", "exact_log_marginal", "fit",
    "gap_decomposition", "inspect_program", "load_checkpoint", "local_posterior", "log_likelihood", "log_weights",
    "optimize_local",
]
