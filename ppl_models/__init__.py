"""Model and guide programs. Models know nothing of inference.

Every program here follows one convention, which every tool in
:mod:`inference` relies on: ``model(x)`` and ``guide(x)`` take a batch ``x``;
per-datapoint latent sites are sampled inside ``pyro.plate("data", len(x))``;
global latents (if any) outside it.

Each model module states its facts in one :class:`~ppl_models.spec.ModelSpec`;
:mod:`ppl_models.registry` collects them (:data:`MODELS`), and :func:`build_model`
makes a fresh (model, guide) pair from a plain config dict, which is how
checkpoints record and rebuild them.
"""

from .gmm import COVARIANCES, CategoricalEncoder, GaussianMixture
from .guides import GAUSSIAN_FAMILIES, FFGEncoder, GaussianEncoder, GaussianHead
from .hvae import HierarchicalEncoder, HierarchicalVAE, LadderEncoder
from .ppca import PPCA
from .registry import MODELS, build_model, get_spec, guide_families, is_factory, load_factory, model_config, option_names
from .sbn import BASELINES, SBNEncoder, SigmoidBeliefNet
from .spec import ModelSpec
from .vae import LIKELIHOODS, VAE, check_likelihood

__all__ = [
    "BASELINES", "COVARIANCES", "CategoricalEncoder", "FFGEncoder", "GAUSSIAN_FAMILIES", "GaussianEncoder", "GaussianHead",
    "GaussianMixture", "HierarchicalEncoder", "HierarchicalVAE", "LIKELIHOODS", "LadderEncoder", "MODELS", "ModelSpec", "PPCA",
    "SBNEncoder", "SigmoidBeliefNet", "VAE", "build_model", "check_likelihood", "get_spec", "guide_families", "is_factory",
    "load_factory", "model_config", "option_names",
]
