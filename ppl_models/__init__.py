"""Model and guide programs. Models know nothing of inference.

Every program here follows one convention, which every tool in
:mod:`inference` relies on: ``model(x)`` and ``guide(x)`` take a batch ``x``;
per-datapoint latent sites are sampled inside ``pyro.plate("data", len(x))``;
global latents (if any) outside it.

:func:`build_model` makes a (model, guide) pair from a plain config dict, which is
how checkpoints record and rebuild them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .gmm import COVARIANCES, CategoricalEncoder, GaussianMixture
from .guides import GAUSSIAN_FAMILIES, FFGEncoder, GaussianEncoder, GaussianHead
from .hvae import HierarchicalEncoder, HierarchicalVAE, LadderEncoder
from .ppca import PPCA
from .sbn import BASELINES, SBNEncoder, SigmoidBeliefNet
from .vae import LIKELIHOODS, VAE, check_likelihood

MODELS = ("vae", "ppca", "gmm", "sbn", "hvae", "ladder")
GUIDES = (*GAUSSIAN_FAMILIES, "categorical", "bernoulli")

#: Amortized guide families each model supports; the first is its default.
MODEL_GUIDES: dict[str, tuple[str, ...]] = {
    "vae": GAUSSIAN_FAMILIES,
    "ppca": GAUSSIAN_FAMILIES,
    "hvae": GAUSSIAN_FAMILIES,
    "ladder": ("ffg",),
    "gmm": ("categorical",),
    "sbn": ("bernoulli",),
}

#: The likelihoods each model supports; the first is its default.
MODEL_LIKELIHOODS: dict[str, tuple[str, ...]] = {
    "vae": ("bernoulli", "gaussian"),
    "ppca": ("gaussian",),
    "hvae": ("bernoulli", "gaussian"),
    "ladder": ("bernoulli", "gaussian"),
    "gmm": ("gaussian",),
    "sbn": ("bernoulli",),
}

_FLOW = {"flow_layers": 2, "flow_hidden": [100]}
_HIERARCHICAL = {
    # Burda et al. (2016): latents 100 and 50, hidden [200, 200] and [100, 100].
    "latent_dims": [100, 50], "hidden": [200, 200], "upper_hidden": [100, 100], "activation": "elu", "min_scale": 1e-2,
}
DEFAULTS: dict[str, dict[str, Any]] = {
    # Cremer, Li & Duvenaud (2018): latent 50, encoder D-200-200-100, decoder 50-200-200-D, ELU.
    "vae": {"latent_dim": 50, "hidden": [200, 200], "encoder_hidden": [200, 200], "activation": "elu", "min_scale": 1e-2, **_FLOW},
    # A linear encoder contains PPCA's optimal fully factorized Gaussian.
    "ppca": {"latent_dim": 5, "encoder_hidden": [], "activation": "elu", **_FLOW},
    "gmm": {
        "components": 10, "covariance": "diag", "min_scale": 1e-2, "encoder_hidden": [100], "activation": "elu",
        "prior_scale": None, "concentration": None,  # None: maximum likelihood; numbers: MAP with those priors
    },
    # Mnih & Gregor (2014): SBN-200 (also 200-200, 200-200-200), NVIL baselines.
    "sbn": {"layers": [200], "baseline": "nvil", "baseline_hidden": [100]},
    "hvae": {**_HIERARCHICAL, **_FLOW},
    "ladder": dict(_HIERARCHICAL),
}


def default_guide(name: str) -> str:
    return MODEL_GUIDES[name][0]


def model_config(name: str, data_dim: int, likelihood: str, **overrides: Any) -> dict[str, Any]:
    """The full config of a model: its defaults updated by the non-None ``overrides``.

    ``overrides`` may name ``guide`` (the amortized family, see :data:`MODEL_GUIDES`)
    and any key of the model's :data:`DEFAULTS`; anything else is refused by name.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    check_likelihood(likelihood)
    if likelihood not in MODEL_LIKELIHOODS[name]:
        raise ValueError(
            f"model {name!r} supports likelihood {' or '.join(MODEL_LIKELIHOODS[name])}; got likelihood {likelihood!r} "
            f"(use --likelihood {MODEL_LIKELIHOODS[name][0]})"
        )
    if int(data_dim) != data_dim or data_dim <= 0:
        raise ValueError(f"data_dim must be a positive integer, got {data_dim}")
    config = {"name": name, "data_dim": int(data_dim), "likelihood": likelihood, "guide": default_guide(name), **DEFAULTS[name]}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in config:
            raise ValueError(f"model {name!r} has no option {key!r}; options: {', '.join(sorted(config))}")
        config[key] = list(value) if isinstance(value, (list, tuple)) else value
    if config["guide"] not in MODEL_GUIDES[name]:
        kind = "discrete" if name in ("gmm", "sbn") else "continuous"
        raise ValueError(
            f"guide {config['guide']!r} does not fit model {name!r} ({kind} latents); "
            f"its guide families: {', '.join(MODEL_GUIDES[name])}"
        )
    for key in ("latent_dim", "components", "flow_layers"):
        if key in config:
            _positive_int(key, config[key])
    for key in ("latent_dims", "layers", "hidden", "encoder_hidden", "upper_hidden", "flow_hidden", "baseline_hidden"):
        if key in config:
            if not isinstance(config[key], list):
                raise ValueError(f"{key} must be a list of positive integers (layer sizes), got {config[key]!r}")
            for size in config[key]:
                _positive_int(f"{key} entries", size)
    return config


def _positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")


def build_model(config: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """Make the ``(model, guide)`` pair described by ``config`` (see :func:`model_config`)."""
    config = model_config(
        config["name"], config["data_dim"], config["likelihood"],
        **{k: v for k, v in config.items() if k not in ("name", "data_dim", "likelihood")},
    )
    name, d, family = config["name"], config["data_dim"], config["guide"]
    flows = {"flow_layers": config.get("flow_layers", 2), "flow_hidden": config.get("flow_hidden", [100])}
    if name in ("vae", "ppca"):
        k = config["latent_dim"]
        if name == "vae":
            model = VAE(d, k, config["hidden"], config["likelihood"], config["activation"], config["min_scale"])
        else:
            model = PPCA(d, k)
        if family == "ffg":
            guide = FFGEncoder(d, k, config["encoder_hidden"], config["activation"])
        else:
            guide = GaussianEncoder(d, k, config["encoder_hidden"], config["activation"], family, **flows)
    elif name in ("hvae", "ladder"):
        sizes = (config["latent_dims"], config["hidden"], config["upper_hidden"])
        model = HierarchicalVAE(d, *sizes, config["likelihood"], config["activation"], config["min_scale"])
        if name == "hvae":
            guide = HierarchicalEncoder(d, *sizes, config["activation"], family, **flows)
        else:
            guide = LadderEncoder(model, config["hidden"], config["upper_hidden"], config["activation"])
    elif name == "gmm":
        model = GaussianMixture(d, config["components"], config["covariance"], config["min_scale"], config["prior_scale"], config["concentration"])
        guide = CategoricalEncoder(d, config["components"], config["encoder_hidden"], config["activation"])
    else:
        model = SigmoidBeliefNet(d, config["layers"])
        guide = SBNEncoder(d, config["layers"], config["baseline"], config["baseline_hidden"])
    return model, guide


__all__ = [
    "BASELINES", "COVARIANCES", "CategoricalEncoder", "FFGEncoder", "GAUSSIAN_FAMILIES", "GUIDES", "GaussianEncoder",
    "GaussianHead", "GaussianMixture", "HierarchicalEncoder", "HierarchicalVAE", "LIKELIHOODS", "LadderEncoder",
    "MODELS", "MODEL_GUIDES", "MODEL_LIKELIHOODS", "PPCA", "SBNEncoder", "SigmoidBeliefNet", "VAE", "build_model",
    "check_likelihood", "default_guide", "model_config",
]
