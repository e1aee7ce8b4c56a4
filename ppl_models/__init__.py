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

from .guides import FFGEncoder
from .ppca import PPCA
from .vae import LIKELIHOODS, VAE, check_likelihood

MODELS = ("vae", "ppca")

DEFAULTS: dict[str, dict[str, Any]] = {
    # Cremer, Li & Duvenaud (2018): latent 50, encoder D-200-200-100, decoder 50-200-200-D, ELU.
    "vae": {"latent_dim": 50, "hidden": [200, 200], "encoder_hidden": [200, 200], "activation": "elu", "min_scale": 1e-2},
    # A linear encoder contains PPCA's optimal fully factorized Gaussian.
    "ppca": {"latent_dim": 5, "encoder_hidden": [], "activation": "elu"},
}


def model_config(name: str, data_dim: int, likelihood: str, **overrides: Any) -> dict[str, Any]:
    """The full config of a model: its defaults updated by the non-None ``overrides``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    check_likelihood(likelihood)
    if name == "ppca" and likelihood != "gaussian":
        raise ValueError(f"model 'ppca' has a Gaussian likelihood; got likelihood {likelihood!r} (use --likelihood gaussian)")
    if int(data_dim) != data_dim or data_dim <= 0:
        raise ValueError(f"data_dim must be a positive integer, got {data_dim}")
    config = {"name": name, "data_dim": int(data_dim), "likelihood": likelihood, **DEFAULTS[name]}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in config:
            raise ValueError(f"model {name!r} has no option {key!r}; options: {', '.join(sorted(config))}")
        config[key] = list(value) if isinstance(value, (list, tuple)) else value
    if int(config["latent_dim"]) != config["latent_dim"] or config["latent_dim"] <= 0:
        raise ValueError(f"latent_dim must be a positive integer, got {config['latent_dim']}")
    return config


def build_model(config: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """Make the ``(model, guide)`` pair described by ``config`` (see :func:`model_config`)."""
    config = model_config(
        config["name"], config["data_dim"], config["likelihood"],
        **{k: v for k, v in config.items() if k not in ("name", "data_dim", "likelihood")},
    )
    d, k = config["data_dim"], config["latent_dim"]
    if config["name"] == "vae":
        model = VAE(d, k, config["hidden"], config["likelihood"], config["activation"], config["min_scale"])
    else:
        model = PPCA(d, k)
    guide = FFGEncoder(d, k, config["encoder_hidden"], config["activation"])
    return model, guide


__all__ = ["FFGEncoder", "LIKELIHOODS", "MODELS", "PPCA", "VAE", "build_model", "check_likelihood", "model_config"]
