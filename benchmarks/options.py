"""Command-line plumbing shared by the benchmarks: one preset mechanism, data and model options, the entry point, run info.

Every benchmark builds its parser with :class:`Parser`: an option added with
``preset=`` has a default that a ``--protocol`` preset may change, and
:meth:`Parser.parse` resolves each such option as *explicit value, else the
protocol's preset, else the default*, remembering which options the command line
set to something other than their default (``args.explicit``). The model options come from the zoo's specs
(:mod:`ppl_models.registry`), so a new model's options appear here by themselves.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from typing import Any

import pyro
import torch

from benchmarks.datasets import BINARIZATIONS, DATASETS, DEFAULT_DATA_ROOT
from benchmarks.outdir import interrupted_message
from inference.distributed import report_failure
from ppl_models import LIKELIHOODS, MODELS, guide_families, is_factory, load_factory, option_names

_UNSET = object()


def sizes(text: str) -> list[int]:
    """Parse comma-separated layer sizes ('none' or '' for no layers)."""
    if text.strip() in ("", "none"):
        return []
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer sizes must be comma-separated integers, got {text!r}") from None
    if any(s <= 0 for s in values):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return values


def positive_ints(text: str) -> list[int]:
    """Parse comma-separated integers >= 1 (an argparse type: a bad value is named in the error)."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be integers >= 1, got {text!r}")
    return values


def yes_no(text: str) -> bool:
    """Parse a boolean option's value: true/false, yes/no, 1/0 (an argparse type: a bad value is named in the error)."""
    values = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.strip().lower() not in values:
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return values[text.strip().lower()]


class Parser(argparse.ArgumentParser):
    """An argument parser with presettable defaults and a ``--protocol`` choice of presets."""

    def __init__(self, *args, presets: dict[str, dict[str, Any]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.presets = presets or {}
        self.preset_defaults: dict[str, Any] = {}
        if self.presets:
            self.add_argument("--protocol", choices=("none", *self.presets), default="none",
                              help="preset a published set-up; options given explicitly override it, e.g. --epochs 5 (default: none)")

    def option(self, group, *flags: str, preset: Any = _UNSET, help: str = "", **kwargs) -> None:
        """Add an option; with ``preset=DEFAULT`` its default is DEFAULT unless a protocol presets another."""
        if preset is _UNSET:
            group.add_argument(*flags, help=help, **kwargs)
            return
        action = group.add_argument(*flags, default=None, help=f"{help} (default: {_shown(preset)})" if help else None, **kwargs)
        self.preset_defaults[action.dest] = preset

    def parse(self, argv: list[str] | None = None, keep: Callable[[argparse.Namespace, str], bool] | None = None) -> argparse.Namespace:
        """Parse ``argv``; fill unset options from the protocol's preset (those ``keep(args, key)`` allows), then the defaults."""
        args = self.parse_args(argv)
        args.explicit = {k for k, v in vars(args).items() if v != self.get_default(k)}  # set to other than their default
        preset = self.presets.get(getattr(args, "protocol", "none"), {})
        for key, value in preset.items():
            if not hasattr(args, key):
                raise KeyError(f"preset {args.protocol!r} sets unknown option {key!r}")
            if getattr(args, key) is None and (keep is None or keep(args, key)):
                setattr(args, key, value)
        for key, default in self.preset_defaults.items():
            if getattr(args, key) is None:
                setattr(args, key, default)
        return args


def preset_applies(args: argparse.Namespace, key: str, presets: dict[str, dict[str, Any]]) -> bool:
    """Whether the protocol's preset of ``key`` applies: a model option applies only to a zoo model that has it.

    A factory (``package.module:factory``) builds its own architecture, and an unknown model name is
    left for the command to refuse by name.
    """
    if key not in option_names():
        return True
    name = args.model or presets[args.protocol].get("model", "vae")
    if is_factory(name) or name not in MODELS:
        return False
    spec = MODELS[name]
    return presets[args.protocol][key] in spec.guides if key == "guide" else key in spec.defaults


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def add_data_arguments(p: Parser) -> None:
    data = p.add_argument_group("data")
    p.option(data, "--dataset", choices=DATASETS, preset="digits", help="the data set")
    data.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="folder holding MNIST/raw (default: %(default)s)")
    data.add_argument("--download", action="store_true", help="let torchvision download MNIST into --data-root")
    data.add_argument("--binarization", choices=BINARIZATIONS, default=None, help="for --likelihood bernoulli (default: dynamic)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--likelihood`` and one flag per option of the zoo's models (from their specs)."""
    model = p.add_argument_group("model")
    listed = "; ".join(f"{name}: {spec.description}" for name, spec in MODELS.items())
    model.add_argument("--model", default=None, help=f"a model of the zoo ({listed}), or package.module:factory, a callable "
                       "returning a fresh (model, guide) pair of your own (default: vae)")
    model.add_argument("--likelihood", choices=LIKELIHOODS, default=None,
                       help="the model's likelihood, which decides the data's form: bernoulli (binarized) or gaussian (grey levels) "
                       "(default: the model's first; bernoulli for a factory)")
    for key in option_names():
        users = [spec for spec in MODELS.values() if key in spec.defaults or key == "guide"]
        if key == "guide":
            model.add_argument("--guide", choices=guide_families(), default=None, help="amortized guide family: ffg (default), "
                               "full, iaf, coupling for continuous latents; categorical (gmm) and bernoulli (sbn) are the discrete models' own")
            continue
        default = users[0].defaults[key]
        kind = sizes if isinstance(default, list) else users[0].types.get(key, type(default))
        names = ", ".join(s.name for s in users)
        values = {s.name: _shown(s.defaults[key]) for s in users}
        if len(set(values.values())) == 1:
            shown = f" (default: {next(iter(values.values()))})" if "default:" not in users[0].option_help(key) else ""
        else:
            shown = " (default: " + ", ".join(f"{v} for {n}" for n, v in values.items()) + ")"
        model.add_argument("--" + key.replace("_", "-"), type=kind, default=None, help=f"{names}: {users[0].option_help(key)}{shown}")


def data_config(dataset: str, likelihood: str, binarization: str | None, binarize_seed: int = 0) -> dict[str, Any]:
    return {
        "dataset": dataset, "likelihood": likelihood,
        "binarization": binarization or ("dynamic" if likelihood == "bernoulli" else None), "binarize_seed": binarize_seed,
    }


def factory_config(name: str, likelihood: str, args: argparse.Namespace) -> dict[str, Any]:
    """The model config of ``--model package.module:factory``: the factory builds its own architecture."""
    given = [k for k in option_names() if k in args.explicit]
    if given:
        raise ValueError(f"--model {name} builds its own architecture; drop {', '.join('--' + g.replace('_', '-') for g in given)}")
    load_factory(name)  # refuses an unknown module or attribute now
    return {"name": name, "likelihood": likelihood}


def run_cli(parse: Callable[[list[str] | None], argparse.Namespace], main: Callable[[argparse.Namespace], Any], argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run ``main``: bad settings and missing data end with ``error: ...`` and exit status 2, a failed
    write with exit status 1, Ctrl-C with what was kept and exit status 130."""
    args = parse(argv)
    try:
        try:
            main(args)
        except BaseException as err:  # under torchrun: the ranks waiting on this one stop too, naming it
            report_failure(err)
            raise
    except KeyboardInterrupt:
        print(f"\n{interrupted_message(getattr(args, 'out', None))}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write failed (disk full, permissions) after the work
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def run_info(seconds: Any) -> dict[str, Any]:
    """What produced a result: timings, versions, machine, threads and the command line."""
    return {
        "seconds": seconds, "python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
        "machine": platform.machine(), "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
    }
