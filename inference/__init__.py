"""Inference for Pyro model/guide pairs that follow the package convention.

One concept per module, the shared basics below their users:

* :mod:`inference.program` — the convention, checked; per-datapoint log weights;
* :mod:`inference.estimators` — per-datapoint ELBO and importance-weighted log p(x);
* :mod:`inference.enumeration` — exact log p(x) and ELBO for few discrete latents;
* :mod:`inference.families` — per-datapoint variational families (FFG, full, flows, discrete);
* :mod:`inference.local` — per-datapoint (local) optimal posteriors q*;
* :mod:`inference.gaps` — the approximation / amortization gap decomposition, exact references;
* :mod:`inference.ais` — annealed importance sampling of log p(x), per datapoint;
* :mod:`inference.bdmc` — bidirectional Monte Carlo bounds on simulated data;
* :mod:`inference.diagnostics` — PSIS k-hat, active units, gradient signal-to-noise;
* :mod:`inference.objectives` — the training objectives by name (one table), in one module per family;
* :mod:`inference.training` — SVI driven by PyTorch Lightning; ``load_trained``;
* :mod:`inference.compare` — training objectives compared on one pair;
* :mod:`inference.sampling`, :mod:`inference.memory`, :mod:`inference.stats`,
  :mod:`inference.validation`, :mod:`inference.io` — global draws and dreams, the memory
  budget, numerical helpers, option checks, atomic writes and safe checkpoint reads.
"""

from .ais import AISOptions, HMCOptions, ais
from .bdmc import bdmc
from .compare import CompareOptions, Comparison, compare_objectives
from .diagnostics import active_units, gradient_snr, pareto_k
from .enumeration import exact_elbo, exact_log_px
from .estimators import Estimate, elbo, iwae_log_px
from .families import LOCAL_FAMILIES, FlowOptions, LocalGuide, ParametrizedGuide, own_family
from .gaps import ExactReference, GapDecomposition, exact_reference, gap_decomposition
from .io import CheckpointError, load_checkpoint
from .local import AdamOptions, LocalOptions, StoppingRule, local_posterior, optimize_local
from .nonfinite import NonFiniteError
from .objectives import OBJECTIVES, Objective, make_loss
from .program import ConventionError, ProgramInfo, inspect_program, log_weights, with_stopped_parameters
from .training import Trained, TrainOptions, TrainResult, fit, load_trained

__all__ = [
    "AISOptions", "AdamOptions", "CheckpointError", "CompareOptions", "Comparison", "ConventionError", "Estimate", "ExactReference",
    "FlowOptions", "GapDecomposition", "HMCOptions", "LOCAL_FAMILIES", "LocalGuide", "LocalOptions", "NonFiniteError", "OBJECTIVES", "Objective", "ParametrizedGuide",
    "ProgramInfo", "StoppingRule", "TrainOptions", "TrainResult", "Trained", "active_units", "ais", "bdmc", "compare_objectives",
    "elbo", "exact_elbo", "exact_log_px", "exact_reference", "fit", "gap_decomposition", "gradient_snr", "inspect_program",
    "load_checkpoint", "load_trained", "local_posterior", "iwae_log_px", "log_weights", "make_loss", "optimize_local",
    "own_family", "pareto_k", "with_stopped_parameters",
]
