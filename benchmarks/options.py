"""Command-line plumbing shared by the benchmarks: data and model options, the error-reporting entry point, run info."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.datasets import BINARIZATIONS, DATASETS, DEFAULT_DATA_ROOT
from ppl_models import GUIDES, LIKELIHOODS, MODELS

#: Options that describe the trained model; with --checkpoint they come from the checkpoint.
ARCHITECTURE = (
    "guide", "latent_dim", "latent_dims", "hidden", "upper_hidden", "encoder_hidden", "activation", "components",
    "covariance", "prior_scale", "concentration", "layers", "baseline", "flow_layers", "flow_hidden",
)


def sizes(text: str) -> list[int]:
    """Parse comma-separated layer sizes ('none' or '' for no layers)."""
    if text.strip() in ("", "none"):
        return []
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer sizes must be comma-separated integers, got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default=None, help="default: digits")
    data.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="folder holding MNIST/raw (default: %(default)s)")
    data.add_argument("--download", action="store_true", help="let torchvision download MNIST into --data-root")
    data.add_argument("--binarization", choices=BINARIZATIONS, default=None, help="for --likelihood bernoulli (default: dynamic)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=MODELS, default=None, help="default: vae")
    model.add_argument("--guide", choices=GUIDES, default=None, help="amortized guide family: ffg (default), full, iaf, coupling for continuous latents; categorical (gmm) and bernoulli (sbn) are the discrete models' own")
    model.add_argument("--likelihood", choices=LIKELIHOODS, default=None, help="default: bernoulli (gaussian for ppca and gmm)")
    model.add_argument("--latent-dim", type=int, default=None, help="vae, ppca: latent size (default: 50 for vae, 5 for ppca)")
    model.add_argument("--latent-dims", type=sizes, default=None, help="hvae, ladder: latent sizes bottom-up (default: 100,50)")
    model.add_argument("--hidden", type=sizes, default=None, help="decoder hidden sizes, e.g. 200,200 (hvae/ladder: between x and z1)")
    model.add_argument("--upper-hidden", type=sizes, default=None, help="hvae, ladder: hidden sizes between latent layers (default: 100,100)")
    model.add_argument("--encoder-hidden", type=sizes, default=None, help="encoder hidden sizes ('none' for linear)")
    model.add_argument("--activation", default=None, help="elu (default), relu, tanh, softplus")
    model.add_argument("--components", type=int, default=None, help="gmm: number of components K (default: 10)")
    model.add_argument("--covariance", default=None, help="gmm: diag (default) or full")
    model.add_argument("--prior-scale", type=float, default=None, help="gmm: MAP with means ~ N(0, s^2) (default: no prior, maximum likelihood)")
    model.add_argument("--concentration", type=float, default=None, help="gmm: MAP with weights ~ Dirichlet(alpha) (default: no prior)")
    model.add_argument("--layers", type=sizes, default=None, help="sbn: latent layer sizes bottom-up, e.g. 200,200 (default: 200)")
    model.add_argument("--baseline", default=None, help="sbn: nvil (default), neural, decaying or none")
    model.add_argument("--flow-layers", type=int, default=None, help="iaf, coupling guides: number of flows (default: 2)")
    model.add_argument("--flow-hidden", type=sizes, default=None, help="iaf, coupling guides: flow hidden sizes (default: 100)")


def run_cli(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Any], argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run ``main``; bad settings and missing data end with ``error: ...`` and exit status 2."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run_info(seconds: Any) -> dict[str, Any]:
    """What produced a result: timings, versions, machine, threads and the command line."""
    import pyro
    import torch

    return {
        "seconds": seconds, "python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
        "machine": platform.machine(), "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
    }
