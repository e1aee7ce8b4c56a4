"""Compare inference algorithms on one model: ``python -m benchmarks.compare``.

Trains the same model once per (objective, K) pair of ``--objectives`` x
``--num-particles``, each from the same initialization, on the same data in the same
order, for the same number of epochs (same seed), then measures on the test split:

* log p̂(x): the importance-weighted bound with ``--log-px-samples`` samples (5000);
* the ELBO of the trained guide;
* active units (Burda et al. 2016): latent units whose posterior mean varies over
  the test data by more than 0.01;
* gradient signal-to-noise ratio of the encoder (guide) and decoder (model)
  parameters under the objective's own estimator, at the end of training, on one
  fixed training batch (Rainforth et al. 2018);
* wall time per training step; and, after every epoch (and every ``--curve-steps``
  steps), the IWAE bound with ``--curve-samples`` samples on ``--curve-points`` test
  points (the learning curve).

Pairs that make no sense (``tracegraph`` with K > 1, ``vimco`` with K = 1, ...) are
skipped with the reason recorded. Writes ``compare.json``, ``compare.md`` and
``compare.png`` into ``--out``; each run trains in ``OUT/runs/<objective>-K<k>/``
(checkpoints, CSV logs), and ``--resume`` finishes an interrupted comparison.

``--protocol iwae-mnist`` and ``--protocol sbn-mnist`` preset published set-ups
(see ``PROTOCOLS``); any option given explicitly overrides the preset, e.g.
``--epochs 5`` for a reduced budget.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from benchmarks.datasets import DATA_DIMS, load_dataset
from benchmarks.options import (
    Parser,
    add_data_arguments,
    add_model_arguments,
    data_config,
    factory_config,
    preset_applies,
    run_cli,
    run_info,
    yes_no,
)
from benchmarks.outdir import OutputFolder
from benchmarks.report import compare_markdown, compare_plot
from inference.compare import CompareOptions, compare_objectives
from inference.diagnostics import ACTIVE_THRESHOLD
from inference.distributed import launched_world_size
from inference.objectives import PARAMETERS, TRAINING_OBJECTIVES, get_objective, objectives_taking
from inference.objectives.semi_amortized import CLIPS, REDUCTIONS
from inference.training import DEVICES, LR_SCHEDULES, TrainOptions, resolve_device
from inference.validation import positive_int
from inference.validation import seed as check_seed
from ppl_models import build_model, get_spec, is_factory, model_config, option_names

#: Published set-ups. Values are defaults for options not given on the command line.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # Burda, Grosse & Salakhutdinov (2016): dynamically binarized MNIST, 1 stochastic layer of 50 units with two
    # deterministic tanh layers of 200 (--model hvae for their 2-layer model: 100-50 latents), Adam
    # (eps 1e-4), batch 20, learning rate 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7 (3280 epochs), test NLL with K = 5000.
    "iwae-mnist": {
        "dataset": "mnist", "likelihood": "bernoulli", "binarization": "dynamic", "model": "vae",
        "latent_dim": 50, "hidden": [200, 200], "encoder_hidden": [200, 200], "activation": "tanh",
        "objectives": "elbo,iwae", "num_particles": "1,5,50", "epochs": 3280, "batch_size": 20, "lr": 1e-3,
        "lr_schedule": "iwae", "kl_warmup_epochs": 0.0, "log_px_samples": 5000,
    },
    # Sigmoid belief nets on MNIST binarized once (Mnih & Gregor 2014; Mnih & Rezende 2016): SBN-200 by default
    # (--layers 200,200 or 200,200,200 for the deeper nets), NVIL (tracegraph with nvil baselines) against VIMCO.
    "sbn-mnist": {
        "dataset": "mnist", "likelihood": "bernoulli", "binarization": "static", "model": "sbn", "layers": [200],
        "baseline": "nvil", "objectives": "tracegraph,vimco", "num_particles": "1,5,50", "epochs": 100,
        "batch_size": 24, "lr": 3e-4, "lr_schedule": "constant", "kl_warmup_epochs": 0.0, "log_px_samples": 5000,
    },
}

#: Published test NLLs (nats) on dynamically binarized MNIST, Burda et al. (2016), Table 1: (model, objective, K).
PUBLISHED = {
    ("vae", "elbo", 1): 86.76, ("vae", "iwae", 5): 85.54, ("vae", "iwae", 50): 84.78,
    ("hvae", "elbo", 1): 85.33, ("hvae", "iwae", 50): 82.90,
}


def make_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0], presets=PROTOCOLS)
    add_data_arguments(p)
    add_model_arguments(p)
    train = p.add_argument_group("training (the same for every run)")
    p.option(train, "--objectives", preset="elbo,iwae,iwae-dreg", help=f"comma-separated objectives from {', '.join(TRAINING_OBJECTIVES)}")
    p.option(train, "--num-particles", "--num-samples", dest="num_particles", preset="1,5", help="comma-separated K, samples per datapoint per step")
    p.option(train, "--epochs", type=int, preset=20, help="epochs")
    p.option(train, "--batch-size", type=int, preset=100, help="batch size")
    p.option(train, "--lr", type=float, preset=1e-3, help="Adam learning rate")
    p.option(train, "--lr-schedule", choices=LR_SCHEDULES, preset="constant", help="constant, iwae (3^i-epoch stages) or iwae-even (the same eight rates, equal stages)")
    p.option(train, "--kl-warmup-epochs", type=float, preset=0.0, help="linear KL warm-up for ELBO objectives")
    p.option(train, "--beta", type=float, preset=1.0, help="the KL weight of the beta-vae runs")
    p.option(train, "--free-bits", type=float, preset=0.0, help="the per-site KL floor (nats) of the free-bits runs")
    p.option(train, "--svi-steps", type=int, preset=0, help="the refinement steps k of the sa-vae runs")
    p.option(train, "--svi-lr", type=float, preset=1.0, help="the refinement step size of the sa-vae runs")
    p.option(train, "--svi-momentum", type=float, preset=0.5, help="the refinement momentum of the sa-vae runs")
    p.option(train, "--svi-clip", choices=CLIPS, preset="batch", help="the sa-vae runs' refinement clipping: per tensor over the batch, or per datapoint")
    p.option(train, "--svi-max-grad-norm", type=float, preset=5.0, help="the norm the sa-vae runs' refinement gradients are clipped to")
    p.option(train, "--svi-reduction", choices=REDUCTIONS, preset="mean", help="the sa-vae runs' refinement ascends the batch's mean ELBO or its sum")
    p.option(train, "--svi-analytic-kl", type=yes_no, preset=True, help="the sa-vae runs' closed-form KL terms where known")
    p.option(train, "--decoder-through-refinement", type=yes_no, preset=True, help="the sa-vae runs' decoder gradient through the refinement")
    p.option(train, "--max-grad-norm", type=float, preset=0.0, help="clip the gradient of all parameters to this norm (0: none)")
    train.add_argument("--resume", action="store_true", help="reuse finished runs in OUT/runs and continue unfinished ones")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --out (without it, or --resume, such a folder is refused)")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--test-points", type=int, default=None, help="test datapoints to evaluate (default: the whole test split)")
    p.option(ev, "--log-px-samples", type=int, preset=5000, help="K for the test log p(x)")
    p.option(ev, "--elbo-samples", type=int, preset=100, help="samples for the test ELBO")
    p.option(ev, "--snr-draws", type=int, preset=100, help="gradient draws for the SNR")
    p.option(ev, "--curve-points", type=int, preset=500, help="test points for the learning curve")
    p.option(ev, "--curve-samples", type=int, preset=100, help="K of the learning curve's IWAE bound")
    ev.add_argument("--curve-steps", type=int, default=None, help="also evaluate the curve every this many steps (default: once per epoch)")
    p.option(ev, "--curve-epochs", type=int, preset=1, help="evaluate the curve at the end of every this many epochs (and of the last)")
    p.option(ev, "--max-elements", type=int, preset=None, help="memory budget per chunk of samples (default: 2^26 on a CPU, half the free memory on a GPU)")
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=DEVICES, default="cpu")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default=os.path.join("results", "compare"), help="output folder (default: %(default)s)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: when attached to a terminal)")
    return p


def parse_list(text: str, what: str, cast=str) -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"{what} is empty")
    try:
        values = [cast(t) for t in items]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated {cast.__name__}s, got {text!r}") from None
    if len(set(values)) != len(values):
        raise ValueError(f"{what} lists a value twice: {text!r}")
    return values


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with the ``--protocol`` preset applied (a preset's model options apply where the model has them)."""
    return make_parser().parse(argv, keep=lambda args, key: preset_applies(args, key, PROTOCOLS))


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], TrainOptions, list[str], list[int], CompareOptions]:
    """Data config, model config, the shared training config, objectives, K values and evaluation options; refuses bad settings."""
    check_seed(args.seed, "--seed")
    objectives = parse_list(args.objectives, "--objectives")
    for name in objectives:
        if name not in TRAINING_OBJECTIVES:
            raise ValueError(f"unknown objective {name!r} in --objectives; choose from {', '.join(TRAINING_OBJECTIVES)}")
    counts = parse_list(args.num_particles, "--num-particles", int)
    for k in counts:
        if k < 1:
            raise ValueError(f"each K in --num-particles must be an integer >= 1, got {k}")
    for key in ("elbo_samples", "snr_draws", "curve_points", "curve_samples", "max_elements", "curve_steps", "test_points", "curve_epochs"):
        if getattr(args, key) is not None:
            positive_int(getattr(args, key), "--" + key.replace("_", "-"))
    if args.snr_draws < 2:
        raise ValueError(f"--snr-draws must be >= 2 to measure a standard deviation, got {args.snr_draws}")
    positive_int(args.log_px_samples, "--log-px-samples (K)")
    options = CompareOptions(args.test_points, args.log_px_samples, args.elbo_samples, args.snr_draws, args.curve_points,
                             args.curve_samples, args.curve_steps, args.max_elements, args.curve_epochs)
    name = args.model or "vae"
    spec = None if is_factory(name) else get_spec(name)
    likelihood = args.likelihood or (spec.likelihoods[0] if spec else "bernoulli")
    data_cfg = data_config(args.dataset, likelihood, args.binarization)
    if spec is None:
        model_cfg = factory_config(name, likelihood, args)
    else:
        overrides = {k: getattr(args, k) for k in option_names() if getattr(args, k) is not None}  # refused by name if they do not apply
        model_cfg = model_config(name, DATA_DIMS[data_cfg["dataset"]], likelihood, **overrides)
    train = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                        kl_warmup_epochs=args.kl_warmup_epochs, seed=args.seed, beta=args.beta, free_bits=args.free_bits,
                        svi_steps=args.svi_steps, svi_lr=args.svi_lr, svi_momentum=args.svi_momentum, svi_clip=args.svi_clip,
                        svi_max_grad_norm=args.svi_max_grad_norm,
                        svi_reduction=args.svi_reduction, svi_analytic_kl=args.svi_analytic_kl,
                        decoder_through_refinement=args.decoder_through_refinement, max_grad_norm=args.max_grad_norm)
    for key, value in train.params().items():  # each run takes its own objective's parameters; one no run takes is refused
        if value != PARAMETERS[key] and not any(key in get_objective(name).params for name in objectives):
            raise ValueError(f"--{key.replace('_', '-')} {value} applies to {', '.join(objectives_taking(key))}, which --objectives does not list")
    return data_cfg, model_cfg, train, objectives, counts, options


#: What a comparison writes at the end, and what its runs write as they go.
RESULTS = ("compare.json", "compare.md", "compare.png", "run_info.json")
STATE = ("runs",)


def main(args: argparse.Namespace) -> dict[str, Any]:
    launched = launched_world_size()
    if launched > 1:
        raise ValueError(f"benchmarks.compare runs in one process; launched on {launched} (torchrun), each would train every run "
                         "on the same device and write the same --out: run it with python -m benchmarks.compare")
    data_cfg, model_cfg, base, objectives, counts, options = resolve(args)
    with OutputFolder(args.out, results=RESULTS, state=STATE, resume=args.resume, overwrite=args.overwrite) as folder:
        return run(args, folder, data_cfg, model_cfg, base, objectives, counts, options)


def run(args: argparse.Namespace, folder: OutputFolder, data_cfg, model_cfg, base, objectives, counts, options) -> dict[str, Any]:
    """Train and evaluate every (objective, K) run, and write the report into the locked ``folder``."""
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    started = time.perf_counter()
    data = load_dataset(data_cfg["dataset"], data_cfg["likelihood"], data_cfg["binarization"], data_root=args.data_root, download=args.download)
    comparison = compare_objectives(
        lambda: build_model(model_cfg), data, objectives, counts, base, options, out_dir=args.out, resume=args.resume,
        device=args.device, progress=progress, run_config={"model": model_cfg, "data": {"dataset": data.name}},
        on_start=lambda objective, k: print(f"[{objective}, K={k}] training {base.epochs} epochs", file=sys.stderr),
    )
    evaluation = {**vars(options), "test_points": options.test_points or len(data.test),
                  "curve_points": min(options.curve_points, len(data.test)), "active_threshold": ACTIVE_THRESHOLD}
    config = {
        "protocol": args.protocol, "data": data_cfg, "model": model_cfg, "train": base.to_dict(), "objectives": objectives,
        "num_particles": counts, "seed": args.seed, "device": str(resolve_device(args.device)), "evaluation": evaluation,
    }
    result = {"config": config, "runs": comparison.runs, "skipped": comparison.skipped}
    table = compare_markdown(result, PUBLISHED)
    folder.write(table, {
        "compare.json": result, "compare.md": table, "compare.png": lambda path: compare_plot(result, path),
        "run_info.json": run_info(time.perf_counter() - started),
    })
    print(f"wrote {os.path.join(args.out, 'compare.json')}, compare.md and compare.png ({time.perf_counter() - started:.0f} s)")
    return result


def cli(argv: list[str] | None = None) -> int:
    return run_cli(parse, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
