"""What a model module states about its model: one :class:`ModelSpec` (collected by :mod:`ppl_models.registry`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

#: Help for the options several models share; a spec's own ``help`` adds to or overrides it.
COMMON_HELP = {
    "guide": "amortized guide family",
    "hidden": "decoder hidden sizes, e.g. 200,200",
    "encoder_hidden": "encoder hidden sizes ('none' for linear)",
    "activation": "elu, relu, tanh or softplus",
    "min_scale": "floor on the decoder's standard deviation",
    "flow_layers": "iaf, coupling guides: number of flows",
    "flow_hidden": "iaf, coupling guides: flow hidden sizes",
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything the toolkit knows about one model of the zoo."""

    name: str
    description: str  #: one line
    build: Callable[[dict[str, Any]], tuple[nn.Module, nn.Module]]  #: full config -> fresh (model, guide)
    defaults: dict[str, Any]  #: architecture options and their defaults
    guides: tuple[str, ...]  #: amortized guide families; the first is the default
    likelihoods: tuple[str, ...]  #: the first is the default
    help: dict[str, str] = field(default_factory=dict)  #: a line per option (adds to :data:`COMMON_HELP`)
    types: dict[str, Callable[[str], Any]] = field(default_factory=dict)  #: parser of an option whose default is None
    train: dict[str, Any] = field(default_factory=dict)  #: TrainOptions defaults that differ for this model
    discrete: bool = False  #: whether its latents are discrete

    def option_help(self, key: str) -> str:
        return self.help.get(key, COMMON_HELP.get(key, key.replace("_", " ")))
