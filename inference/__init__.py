"""Inference for Pyro model/guide pairs that follow the package convention.

One concept per module:

* :mod:`inference.program` — the convention, checked; per-datapoint log weights;
* :mod:`inference.estimators` — per-datapoint ELBO and importance-weighted log p(x);
* :mod:`inference.enumeration` — exact log p(x) and ELBO for few discrete latents;
* :mod:`inference.families` — per-datapoint variational families (FFG, full, flows, discrete);
* :mod:`inference.local` — per-datapoint (local) optimal posteriors q*;
* :mod:`inference.gaps` — the approximation / amortization gap decomposition;
* :mod:`inference.ais` — annealed importance sampling of log p(x), per datapoint;
* :mod:`inference.bdmc` — bidirectional Monte Carlo bounds on simulated data;
* :mod:`inference.diagnostics` — PSIS k-hat, active units, gradient signal-to-noise;
* :mod:`inference.objectives` — training objectives by name, KL warm-up;
* :mod:`inference.iwae` — importance-weighted objectives (IWAE, STL, DReG, VIMCO);
* :mod:`inference.wake_sleep` — reweighted wake-sleep and wake-sleep;
* :mod:`inference.training` — SVI driven by PyTorch Lightning;
* :mod:`inference.io` — atomic writes and safe checkpoint reads.
"""

from .ais import AISOptions, HMCConfig, ais
from .bdmc import bdmc
from .diagnostics import active_units, gradient_snr, pareto_k
from .enumeration import exact_elbo, exact_log_marginal
from .estimators import Estimate, elbo, log_likelihood
from .families import LOCAL_FAMILIES, FlowOptions, LocalGuide, ParametrizedGuide, own_family
from .gaps import GapDecomposition, gap_decomposition
from .io import CheckpointError, load_checkpoint
from .local import AdamConfig, StoppingRule, local_posterior, optimize_local
from .program import ConventionError, ProgramInfo, inspect_program, log_weights, with_stopped_parameters
from .training import TrainConfig, fit

__all__ = [
    "AISOptions", "HMCConfig", "ais", "bdmc", "active_units", "gradient_snr", "pareto_k",
    "AdamConfig", "CheckpointError", "ConventionError", "Estimate", "FlowOptions", "GapDecomposition", "LOCAL_FAMILIES",
    "LocalGuide", "ParametrizedGuide", "ProgramInfo", "StoppingRule", "TrainConfig", "elbo", "exact_elbo", "exact_log_marginal",
    "fit", "gap_decomposition", "inspect_program", "load_checkpoint", "local_posterior", "log_likelihood", "log_weights",
    "optimize_local", "own_family", "with_stopped_parameters",
]
