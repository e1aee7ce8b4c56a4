"""The model zoo's registry: every model module states its facts in one :class:`ModelSpec`, collected here by name.

A spec holds everything the toolkit knows about a model: its options and their
defaults (with a line of help each), the amortized guide families and likelihoods it
supports (the first is the default), the training defaults that differ from
:class:`inference.training.TrainOptions`, and the builder that makes a fresh
``(model, guide)`` pair from a config. The command lines, checkpoints and
:func:`build_model` read the spec; nothing else names a model.

**Adding a model**: write ``ppl_models/<name>.py`` with the model, its guide and a
``SPEC = ModelSpec(...)``, then add its name to :data:`ZOO` below.

A model may also come from outside the zoo: ``"package.module:factory"`` names a
callable returning a fresh ``(model, guide)`` pair (:func:`load_factory`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from .spec import ModelSpec
from .vae import check_likelihood

#: The zoo: one module of this package per model, each with a ``SPEC`` (or ``SPECS`` for several).
ZOO = ("vae", "ppca", "gmm", "sbn", "hvae")

def _collect() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for name in ZOO:
        module = importlib.import_module(f"{__package__}.{name}")
        for spec in getattr(module, "SPECS", (getattr(module, "SPEC", None),)):
            if spec is None:
                raise TypeError(f"model module {module.__name__} has no SPEC")
            if spec.name in specs:
                raise ValueError(f"two models are named {spec.name!r}")
            specs[spec.name] = spec
    return specs


#: Every model of the zoo by name.
MODELS: dict[str, ModelSpec] = _collect()


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)} (or package.module:factory for your own)")
    return MODELS[name]


def is_factory(name: str) -> bool:
    """Whether ``name`` names a user factory (``package.module:factory``) rather than a model of the zoo."""
    return ":" in str(name)


def load_factory(name: str) -> Callable[[], tuple[nn.Module, nn.Module]]:
    """The callable ``package.module:factory``, which returns a fresh ``(model, guide)`` pair each call."""
    module_name, _, attribute = str(name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r} for --model {name}: {err}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"--model {name}: module {module_name!r} has no callable {attribute!r}")
    return factory


def positive_sizes(key: str, value: Any) -> list[int]:
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list of positive integers (layer sizes), got {value!r}")
    for size in value:
        _positive_int(f"{key} entries", size)
    return value


def _positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")


def model_config(name: str, data_dim: int, likelihood: str, **overrides: Any) -> dict[str, Any]:
    """The full config of a model: its spec's defaults updated by the non-None ``overrides``.

    ``overrides`` may name ``guide`` (the amortized family, see :attr:`ModelSpec.guides`)
    and any option of the spec; anything else is refused by name.
    """
    spec = get_spec(name)
    check_likelihood(likelihood)
    if likelihood not in spec.likelihoods:
        raise ValueError(
            f"model {name!r} supports likelihood {' or '.join(spec.likelihoods)}; got likelihood {likelihood!r} "
            f"(use --likelihood {spec.likelihoods[0]})"
        )
    if isinstance(data_dim, bool) or int(data_dim) != data_dim or data_dim <= 0:
        raise ValueError(f"data_dim must be a positive integer, got {data_dim}")
    config = {"name": name, "data_dim": int(data_dim), "likelihood": likelihood, "guide": spec.guides[0], **spec.defaults}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in config:
            raise ValueError(f"model {name!r} has no option {key!r}; options: {', '.join(sorted(config))}")
        config[key] = list(value) if isinstance(value, (list, tuple)) else value
    if config["guide"] not in spec.guides:
        kind = "discrete" if spec.discrete else "continuous"
        raise ValueError(
            f"guide {config['guide']!r} does not fit model {name!r} ({kind} latents); its guide families: {', '.join(spec.guides)}"
        )
    for key, default in spec.defaults.items():
        if isinstance(default, list):
            positive_sizes(key, config[key])
        elif isinstance(default, int) and not isinstance(default, bool):
            _positive_int(key, config[key])
    return config


def build_model(config: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """Make the ``(model, guide)`` pair described by ``config`` (see :func:`model_config`), or call its factory."""
    if is_factory(config["name"]):
        pair = load_factory(config["name"])()
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, nn.Module) for p in pair)):
            raise TypeError(f"the factory {config['name']!r} must return a (model, guide) pair of torch.nn.Modules (a fresh one "
                            f"per call); it returned {type(pair).__name__} {str(pair)[:80]!r}")
        return tuple(pair)
    config = model_config(
        config["name"], config["data_dim"], config["likelihood"],
        **{k: v for k, v in config.items() if k not in ("name", "data_dim", "likelihood")},
    )
    return get_spec(config["name"]).build(config)


def option_names() -> tuple[str, ...]:
    """Every model option of the zoo (the command line's model flags), ``guide`` first."""
    names = {"guide": None}
    for spec in MODELS.values():
        names.update(dict.fromkeys(spec.defaults))
    return tuple(names)


def guide_families() -> tuple[str, ...]:
    return tuple(dict.fromkeys(g for spec in MODELS.values() for g in spec.guides))
