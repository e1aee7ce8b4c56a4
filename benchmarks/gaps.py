"""The inference-gap decomposition, end to end: ``python -m benchmarks.gaps``.

Trains a model and its amortized guide by SVI (or loads a checkpoint), then for
the first N points of the training split and of the test split estimates

* log p(x) — importance-weighted bound with K samples (default 5000), proposal
  per datapoint the better of q and q*;
* L[q*] — the ELBO of the best member of the amortized guide's own family found per
  datapoint (a free FFG for an FFG encoder, a per-datapoint flow for a flow encoder, free
  bottom-up statistics for the ladder guide, ...); ``--local ffg,iaf`` fits further
  families and reports them beside it, never instead;
* L[q] — the ELBO of the amortized guide;

and the approximation (log p - L[q*]), amortization (L[q*] - L[q]) and
inference (log p - L[q]) gaps. Writes ``gaps.json``, ``gaps.md`` and
``run_info.json`` into ``--out`` and prints the table.

Reference: Cremer, Li & Duvenaud (2018), *Inference Suboptimality in
Variational Autoencoders*, ICML.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from benchmarks.datasets import DATA_DIMS, Data, load_dataset
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
from benchmarks.outdir import OutputFolder, load_saved_block
from benchmarks.report import gaps_markdown
from inference.ais import AIS_INITS, SCHEDULES, AISOptions, HMCOptions
from inference.distributed import eval_blocks, gather_to_all, init_from_environment, launched_world_size, rank_blocks, world
from inference.families import LOCAL_FAMILIES, FlowOptions
from inference.gaps import LOG_PX_METHODS, concatenate, concatenate_exact, exact_reference, from_state, gap_decomposition, to_state
from inference.io import atomic_torch_save, checksum, load_checkpoint
from inference.local import LOCAL_INITS, AdamOptions, LocalOptions, StoppingRule
from inference.memory import resolve_max_elements
from inference.objectives import get_objective, objectives_help
from inference.objectives.semi_amortized import CLIPS, REDUCTIONS
from inference.sampling import set_seed
from inference.training import CHECKPOINT_KEYS, DEVICES, LR_SCHEDULES, WARMUPS, TrainOptions, fit, load_trained, resolve_device
from inference.validation import positive_int, positive_number
from inference.validation import seed as check_seed
from ppl_models import build_model, get_spec, is_factory, model_config, option_names

ARCHITECTURE = option_names()
MODEL_OPTIONS = ("dataset", "model", "likelihood", "binarization", *ARCHITECTURE)
#: Options of TrainOptions that the command line sets (with --checkpoint they come from the checkpoint).
TRAIN_CONFIG_OPTIONS = ("objective", "num_particles", "epochs", "batch_size", "lr", "adam_eps", "lr_schedule", "kl_warmup_epochs", "warmup",
                        "beta", "free_bits", "svi_steps", "svi_lr", "svi_momentum", "svi_clip", "svi_max_grad_norm", "svi_reduction", "svi_analytic_kl",
                        "decoder_through_refinement", "max_grad_norm")
TRAIN_OPTIONS = (*TRAIN_CONFIG_OPTIONS, "resume")


#: Published set-ups: defaults for every option not given on the command line.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # Cremer, Li & Duvenaud (2018), as their code (chriscremer/Inference-Suboptimality) runs it on MNIST: a fixed binarization,
    # encoder 784-200-200-(2x50), decoder 50-200-200-784, tanh, batch 20, Adam (eps 1e-8) with the IWAE schedule over 3280
    # epochs, the entropy term -log q warmed up over 100 epochs; the first 100 training and 100 test points; local q* from
    # the prior N(0, I), Adam lr 1e-3, 50 samples per step, stopped when more than 10 windows of 100 steps in a row fail to
    # improve, no step cap; L[q*] and L[q] with 5000 samples; log p(x) the larger of AIS (100 chains, 5000 linear
    # intermediate distributions from the prior, 10 leapfrog steps, step size from 0.1) and IWAE with K = 5000.
    # Every remaining difference is listed in docs/gaps.md.
    "cremer-mnist": {
        "dataset": "mnist", "model": "vae", "likelihood": "bernoulli", "binarization": "static", "latent_dim": 50,
        "hidden": [200, 200], "encoder_hidden": [200, 200], "activation": "tanh", "batch_size": 20, "lr": 1e-3,
        "adam_eps": 1e-8, "lr_schedule": "iwae", "epochs": 3280, "kl_warmup_epochs": 100.0, "warmup": "entropy",
        "num_points": 100, "local_init": "prior", "local_lr": 1e-3, "local_samples": 50, "local_window": 100,
        "local_patience": 11, "local_max_steps": 1_000_000, "elbo_samples": 5000, "log_px": "max", "log_px_samples": 5000,
        "ais_chains": 100, "ais_steps": 5000, "ais_schedule": "linear", "ais_leapfrog": 10, "ais_step_size": 0.1, "ais_init": "prior",
    },
}


def make_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.gaps", description=__doc__.split("\n\n")[0], presets=PROTOCOLS)
    add_data_arguments(p)
    add_model_arguments(p)
    train = p.add_argument_group("training")
    train.add_argument("--objective", default=None, help=f"training objective (default: elbo; the model's own for gmm, sbn): {objectives_help()}")
    train.add_argument("--num-particles", type=int, default=None, help="K, samples per datapoint per step (default: 1)")
    train.add_argument("--epochs", type=int, default=None, help="default: 100")
    train.add_argument("--batch-size", type=int, default=None, help="default: 100")
    train.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 1e-3)")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None, help="constant (default), iwae (3^i-epoch stages) or iwae-even (the same eight rates, equal stages)")
    train.add_argument("--kl-warmup-epochs", type=float, default=None, help="linear KL warm-up length (default: 10 where warm-up applies, else 0)")
    train.add_argument("--warmup", choices=WARMUPS, default=None, help="what the warm-up weight scales: kl (log p(z) - log q, default) or entropy (-log q alone, as Cremer et al.'s code)")
    train.add_argument("--adam-eps", type=float, default=None, help="Adam's epsilon (default: 1e-4, Burda et al. 2016)")
    train.add_argument("--beta", type=float, default=None, help="objective beta-vae: the weight on the KL term (default: 1, the ELBO)")
    train.add_argument("--free-bits", type=float, default=None, help="objective free-bits: each latent site's KL floor in nats (default: 0, the ELBO)")
    train.add_argument("--svi-steps", type=int, default=None, help="objective sa-vae: refinement steps k per datapoint (default: 0, the ELBO)")
    train.add_argument("--svi-lr", type=float, default=None, help="objective sa-vae: refinement step size (default: 1)")
    train.add_argument("--svi-momentum", type=float, default=None, help="objective sa-vae: refinement momentum (default: 0.5)")
    train.add_argument("--svi-clip", choices=CLIPS, default=None, help="objective sa-vae: refinement gradients clipped per "
                       "tensor over the batch (batch, default) or per datapoint")
    train.add_argument("--svi-max-grad-norm", type=float, default=None, help="objective sa-vae: the norm refinement gradients are clipped to (default: 5)")
    train.add_argument("--svi-reduction", choices=REDUCTIONS, default=None, help="objective sa-vae: the refinement ascends the batch's "
                       "mean ELBO (mean, default, Kim et al.'s code) or its sum")
    train.add_argument("--svi-analytic-kl", type=yes_no, default=None, help="objective sa-vae: closed-form KL terms where known (default: true)")
    train.add_argument("--decoder-through-refinement", type=yes_no, default=None, help="objective sa-vae: the decoder's gradient "
                       "through the refinement steps (default: true; false: at fixed refined parameters)")
    train.add_argument("--max-grad-norm", type=float, default=None, help="clip the gradient of all parameters to this norm (default: 0, none)")
    train.add_argument("--checkpoint", default=None, help="evaluate this checkpoint instead of training")
    train.add_argument("--resume", action="store_true", help="continue training from OUT/checkpoints/last.ckpt, and the evaluation from the blocks of points saved in OUT/partial")
    ev = p.add_argument_group("evaluation")
    p.option(ev, "--num-points", type=int, preset=50, help="datapoints per split")
    p.option(ev, "--log-px-samples", type=int, preset=5000, help="K for log p(x)")
    p.option(ev, "--elbo-samples", type=int, preset=1000, help="samples for each ELBO")
    p.option(ev, "--local-samples", type=int, preset=50, help="samples per local q* step")
    p.option(ev, "--local-lr", type=float, preset=1e-3, help="local q* Adam learning rate")
    p.option(ev, "--local-window", type=int, preset=100, help="steps per averaging window")
    p.option(ev, "--local-patience", type=int, preset=10, help="windows without improvement before stopping")
    p.option(ev, "--local-max-steps", type=int, preset=20_000, help="cap on local q* steps")
    p.option(ev, "--local-init", choices=LOCAL_INITS, preset="encoder", help="where local q* starts")
    ev.add_argument("--local", default=None, help=f"further local q* families to fit and report beside the guide's own (which always defines the gaps), comma-separated: {', '.join(LOCAL_FAMILIES)} (default: none)")
    p.option(ev, "--local-flow-layers", type=int, preset=2, help="local iaf/coupling q*: flows per datapoint")
    p.option(ev, "--local-flow-hidden", type=int, preset=100, help="local iaf/coupling q*: hidden units per flow, 0 for affine")
    p.option(ev, "--log-px", choices=LOG_PX_METHODS, preset="iwae", help="log p(x) estimator: iwae (importance-weighted bound, proposal the best of q and q*), ais (annealed importance sampling), or max (both; the higher mean is reported, both are recorded)")
    p.option(ev, "--ais-chains", type=int, preset=100, help="AIS chains per datapoint")
    p.option(ev, "--ais-steps", type=int, preset=1000, help="AIS intermediate distributions (the reference uses 10000)")
    p.option(ev, "--ais-leapfrog", type=int, preset=10, help="HMC leapfrog steps per AIS transition")
    p.option(ev, "--ais-step-size", type=float, preset=0.05, help="initial HMC step size, adapted toward 0.65 acceptance")
    p.option(ev, "--ais-schedule", choices=SCHEDULES, preset="sigmoid", help="annealing schedule")
    p.option(ev, "--ais-pilot-chains", type=int, preset=HMCOptions.pilot_chains,
             help="chains per datapoint of the pilot run that adapts the HMC step sizes, then frozen for the weighted chains")
    p.option(ev, "--ais-init", choices=AIS_INITS, preset="prior", help="AIS initial distribution: the prior or the amortized guide")
    ev.add_argument("--eval-block", type=int, default=100, help="points evaluated (and saved, for --resume) together (default: %(default)s)")
    p.option(ev, "--max-elements", type=int, preset=None, help="memory budget: tensor elements one chunk of samples may create (default: 2^26 on a CPU, half the free memory on a GPU)")
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=DEVICES, default="cpu")
    run.add_argument("--devices", default="1", help="devices for training (Lightning), e.g. 2 with --strategy ddp")
    run.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    run.add_argument("--num-nodes", type=int, default=1,
                     help="machines training together with --strategy ddp (each runs this command with NODE_RANK, MASTER_ADDR and "
                          "MASTER_PORT set); the evaluation is then sharded over all their devices (default: %(default)s)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default=os.path.join("results", "gaps"), help="output folder (default: %(default)s)")
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out (without it, or --resume, such a folder is refused)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: when attached to a terminal)")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with the ``--protocol`` preset applied (with ``--checkpoint``, its evaluation settings only)."""
    def keep(args: argparse.Namespace, key: str) -> bool:
        if args.checkpoint and key in (*TRAIN_OPTIONS, *MODEL_OPTIONS):
            return False
        return preset_applies(args, key, PROTOCOLS)

    return make_parser().parse(argv, keep=keep)


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before any data is loaded or any time is spent."""
    positive_int(args.num_points, "--num-points")
    positive_int(args.eval_block, "--eval-block")
    positive_int(args.log_px_samples, "--log-px-samples (K)")
    for name in ("elbo_samples", "local_samples", "local_window", "local_patience", "local_max_steps", "local_flow_layers"):
        positive_int(getattr(args, name), "--" + name.replace("_", "-"))
    if args.max_elements is not None:  # None: the device's default
        positive_int(args.max_elements, "--max-elements")
    positive_number(args.local_lr, "--local-lr")
    ais_options(args)  # refuses bad AIS settings before any training
    if args.local_flow_hidden < 0:
        raise ValueError(f"--local-flow-hidden must be >= 0, got {args.local_flow_hidden}")
    check_seed(args.seed, "--seed")
    _devices(args.devices)
    if positive_int(args.num_nodes, "--num-nodes") > 1 and "ddp" not in args.strategy:
        raise ValueError(f"--num-nodes {args.num_nodes} needs --strategy ddp (got --strategy {args.strategy})")
    if args.local is not None and not _families(args.local):
        raise ValueError(f"--local {args.local!r} names no family; give comma-separated names from {', '.join(LOCAL_FAMILIES)}, or leave it out")
    for family in _families(args.local):
        if family not in LOCAL_FAMILIES:
            raise ValueError(f"unknown local family {family!r} in --local; choose from {', '.join(LOCAL_FAMILIES)}")
    if args.checkpoint:
        given = [o for o in TRAIN_OPTIONS if o in args.explicit]
        if given:
            raise ValueError(f"--checkpoint evaluates a trained model; drop the training option(s) {', '.join('--' + g.replace('_', '-') for g in given)}")
    launched = launched_world_size()
    if launched > 1 and not args.checkpoint and "ddp" not in args.strategy:
        raise ValueError(f"launched on {launched} processes (torchrun), each would train its own copy of the model: train with DDP over "
                         f"them (--devices {launched} --strategy ddp on one machine), or evaluate a trained model with --checkpoint")


def ais_options(args: argparse.Namespace) -> AISOptions:
    """The AIS settings of the command line (checked)."""
    positive_int(args.ais_chains, "--ais-chains")
    positive_int(args.ais_steps, "--ais-steps")
    positive_int(args.ais_pilot_chains, "--ais-pilot-chains")
    hmc = HMCOptions(leapfrog_steps=args.ais_leapfrog, step_size=args.ais_step_size,
                    max_step_size=max(HMCOptions.max_step_size, args.ais_step_size), pilot_chains=args.ais_pilot_chains)
    return AISOptions(args.ais_chains, args.ais_steps, args.ais_schedule, args.ais_init, hmc)


def _families(text: str | None) -> list[str]:
    return [] if not text else [f.strip() for f in text.split(",") if f.strip()]


def local_families(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--local`` families: fitted beside the guide's own family, which always defines the gaps."""
    return tuple(f for f in dict.fromkeys(_families(args.local)) if f != "guide")


def _explicit(args: argparse.Namespace, saved: dict[str, Any], key: str, default: Any) -> Any:
    """The value of a model option: the explicit one, else the checkpoint's, else the given one or ``default``; refusing conflicts."""
    value = getattr(args, key)
    if key in saved:
        if key in args.explicit and value != saved[key]:
            raise ValueError(f"--{key.replace('_', '-')} {value} conflicts with the checkpoint, which has {saved[key]!r}")
        return saved[key]
    return default if value is None else value


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], TrainOptions, dict | None]:
    """Data config, model config, training config and (if any) the loaded checkpoint."""
    checkpoint = load_checkpoint(args.checkpoint, required=CHECKPOINT_KEYS) if args.checkpoint else None
    saved = checkpoint["config"] if checkpoint else {}
    saved_data, saved_model = saved.get("data", {}), saved.get("model", {})
    flat = {**dict(saved_data), **{("model" if k == "name" else k): v for k, v in saved_model.items()}}
    name = _explicit(args, flat, "model", "vae")
    spec = None if is_factory(name) else get_spec(name)
    likelihood = _explicit(args, flat, "likelihood", spec.likelihoods[0] if spec else "bernoulli")
    data_cfg = data_config(_explicit(args, flat, "dataset", "digits"), likelihood, _explicit(args, flat, "binarization", None),
                           saved_data.get("binarize_seed", 0))
    if spec is None:  # the factory builds its own architecture: model options are refused, with or without a checkpoint
        model_cfg = factory_config(name, likelihood, args)  # refuses model options, checkpoint or not
        model_cfg = saved_model or model_cfg
    else:
        overrides = {k: _explicit(args, flat, k, None) for k in ARCHITECTURE}
        data_dim = saved_model.get("data_dim") or DATA_DIMS[data_cfg["dataset"]]
        model_cfg = model_config(name, data_dim, likelihood, **overrides)
    if checkpoint:
        return data_cfg, model_cfg, TrainOptions(**saved["train"]), checkpoint
    model_train = spec.train if spec else {}
    objective = args.objective or model_train.get("objective", "elbo")
    warmup = 10.0 if get_objective(objective).warmup else 0.0  # warm-up scales an ELBO's KL; the bounds without one train without it
    defaults = TrainOptions(**{"kl_warmup_epochs": warmup, "seed": args.seed, **model_train})
    train = TrainOptions(**{**defaults.to_dict(), **{k: getattr(args, k) for k in TRAIN_CONFIG_OPTIONS if getattr(args, k) is not None}})
    get_objective(train.objective).check_params(train.objective, train.params())  # --beta, --free-bits, --svi-*: refused now if not taken
    return data_cfg, model_cfg, train, checkpoint


def evaluate_block(model, guide, x: torch.Tensor, lo: int, hi: int, args: argparse.Namespace, families: tuple[str, ...],
                   progress: bool, seed: int) -> dict[str, Any]:
    """The decomposition of the points ``x[lo:hi]`` with draws keyed by (``seed``, their index), as plain state."""
    local = LocalOptions(
        num_samples=args.local_samples, adam=AdamOptions(lr=args.local_lr), rule=StoppingRule(args.local_window, args.local_patience, args.local_max_steps),
        init=args.local_init, flow=FlowOptions(args.local_flow_layers, args.local_flow_hidden), families=families,
    )
    result = gap_decomposition(
        model, guide, x[lo:hi], log_px_samples=args.log_px_samples, elbo_samples=args.elbo_samples, local=local,
        log_px=args.log_px, ais_options=ais_options(args), max_elements=args.max_elements, progress=progress, seed=seed,
        index=torch.arange(lo, hi, device=x.device),
    )
    return to_state(result, exact_reference(model, guide, x[lo:hi], result.family, args.max_elements))


def split_summary(model, guide, x: torch.Tensor, args: argparse.Namespace, families: tuple[str, ...], progress: bool,
                  seed: int, split: str = "points", fingerprint: str = "") -> dict[str, Any] | None:
    """The gap decomposition of the points ``x``, summarized, with the exact answers where they are known.

    Every draw is keyed by (``seed``, index of the point) (:mod:`inference.streams`), and the points are
    evaluated in blocks of ``--eval-block`` (:func:`inference.distributed.eval_blocks`). Under a torch.distributed group rank r
    evaluates blocks r, r + W, …; every rank gathers them all and summarizes, and rank 0 returns the summary
    (None on the other ranks): the numbers of one process. With ``--out`` each finished block is saved in
    ``OUT/partial/`` at once (atomically), and ``--resume`` reads it back instead of evaluating it again.
    """
    rank, size = world()
    blocks = eval_blocks(len(x), args.eval_block, size)
    partial = os.path.join(args.out, PARTIAL) if args.out else None
    done: dict[int, dict[str, Any]] = {}
    for k in rank_blocks(blocks, rank, size):
        lo, hi = blocks[k]
        path = os.path.join(partial, f"{split}-{lo:06d}-{hi:06d}.pt") if partial else None
        saved = load_saved_block(path, fingerprint) if path and args.resume else None
        state = saved["state"] if saved is not None else None
        if state is None:
            state = evaluate_block(model, guide, x, lo, hi, args, families, progress, seed)
            if path:
                os.makedirs(partial, exist_ok=True)
                atomic_torch_save({"fingerprint": fingerprint, "state": state}, path)
        done[k] = state
    # every rank gets every block and summarizes: a summary that fails, fails on every rank (none is left waiting)
    states = {k: v for part in gather_to_all(done) for k, v in part.items()}
    parts = [from_state(states[k]) for k in range(len(blocks))]
    merged, exact = concatenate([p[0] for p in parts]), concatenate_exact([p[1] for p in parts])
    summary = {**merged.summary(), "exact": exact.summary() if exact is not None else None}
    return summary if rank == 0 else None


#: What the gaps job writes at the end, and what its training writes as it goes.
RESULTS = ("gaps.json", "gaps.md", "run_info.json")
STATE = ("checkpoints", "logs")
#: The finished blocks of points an evaluation saves as it goes (``--resume`` continues from them).
PARTIAL = "partial"


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    data_cfg, model_cfg, train_cfg, checkpoint = resolve(args)
    device, devices = resolve_device(args.device), _devices(args.devices)
    with OutputFolder(args.out, results=RESULTS, state=STATE, trains=checkpoint is None, resume=args.resume, overwrite=args.overwrite,
                      partial=(PARTIAL,)) as folder:
        return run(args, folder, data_cfg, model_cfg, train_cfg, checkpoint, device, devices)


def run(args: argparse.Namespace, folder: OutputFolder, data_cfg, model_cfg, train_cfg: TrainOptions, checkpoint, device, devices) -> dict[str, Any]:
    """Train (or load), evaluate both splits, and write the results into the locked ``folder``."""
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    started = time.perf_counter()
    data: Data = load_dataset(
        data_cfg["dataset"], data_cfg["likelihood"], data_cfg["binarization"],
        data_root=args.data_root, download=args.download, binarize_seed=data_cfg["binarize_seed"],
    )
    if model_cfg.get("data_dim", data.data_dim) != data.data_dim:
        raise ValueError(f"the model expects {model_cfg['data_dim']}-dimensional data but {data.name} has {data.data_dim} dimensions")
    points = {split: data.eval_points(split, args.num_points) for split in ("train", "test")}

    families = local_families(args)
    run_config = {"data": data_cfg, "model": model_cfg}
    if checkpoint is not None:
        model, guide, _ = load_trained(args.checkpoint)
        train_seconds = 0.0
    else:
        set_seed(train_cfg.seed)
        model, guide = build_model(model_cfg)
        if hasattr(model, "init_from_data"):  # the mixture: means at random datapoints
            model.init_from_data(data.train, torch.Generator().manual_seed(train_cfg.seed))
        t0 = time.perf_counter()
        trained = fit(
            model, guide, data, train_cfg, out_dir=args.out, resume=args.resume,
            device=args.device, devices=devices, strategy=args.strategy, num_nodes=args.num_nodes, progress=progress, run_config=run_config,
        )
        train_seconds = time.perf_counter() - t0
        if not trained.is_global_zero and not dist.is_initialized():
            return {}
        if trained.epochs_run != train_cfg.epochs:  # --resume past the asked count: record the model evaluated
            print(f"note: the checkpoint had already run {trained.epochs_run} epochs (asked: {train_cfg.epochs}); "
                  f"evaluating the {trained.epochs_run}-epoch model", file=sys.stderr)
            train_cfg = dataclasses.replace(train_cfg, epochs=trained.epochs_run)
    if init_from_environment(device) and device.type == "cuda" and device.index is None:
        # a torchrun launch of an evaluation (a DDP training started its own group): this rank's GPU, LOCAL_RANK,
        # which init_from_environment made the current device (not cuda:0 on every rank)
        device = torch.device("cuda", torch.cuda.current_device())
    model.to(device).eval()
    guide.to(device).eval()

    evaluation = {
        "num_points": args.num_points, "log_px_samples": args.log_px_samples, "elbo_samples": args.elbo_samples,
        "local_samples": args.local_samples, "local_lr": args.local_lr, "local_window": args.local_window,
        "local_patience": args.local_patience, "local_max_steps": args.local_max_steps, "local_init": args.local_init,
        "max_elements": resolve_max_elements(args.max_elements, device), "local_families": list(families),
        "local_flow_layers": args.local_flow_layers, "local_flow_hidden": args.local_flow_hidden, "log_px": args.log_px,
    }
    if args.log_px in ("ais", "max"):
        evaluation.update(ais_chains=args.ais_chains, ais_steps=args.ais_steps, ais_leapfrog=args.ais_leapfrog,
                          ais_step_size=args.ais_step_size, ais_schedule=args.ais_schedule, ais_init=args.ais_init,
                          ais_pilot_chains=args.ais_pilot_chains)
    rank, size = world()
    # what a saved block must have been evaluated with to be reused: the settings, the seed, the points and the model
    # (max_elements as asked, None for the device's default: on a GPU the resolved value follows the free memory, which
    # may differ between a run and its resumption, or between ranks, though rarely by the power of two it is rounded to)
    fingerprint = checksum({"evaluation": {**evaluation, "max_elements": args.max_elements}, "seed": args.seed, "eval_block": args.eval_block,
                            "points": {k: v.cpu() for k, v in points.items()},
                            "model": {k: v.cpu() for k, v in {**model.state_dict(), **{f"guide.{n}": t for n, t in guide.state_dict().items()}}.items()}})
    splits, seconds = {}, {}
    for i, (split, x) in enumerate(points.items()):
        t0 = time.perf_counter()
        set_seed(args.seed * 1000 + i + 1)
        splits[split] = split_summary(model, guide, x.to(device), args, families, progress, seed=args.seed * 1000 + i + 1,
                                      split=split, fingerprint=fingerprint)
        seconds[split] = time.perf_counter() - t0
    if rank != 0:
        return {}

    config = {
        "protocol": args.protocol, "data": data_cfg, "model": model_cfg, "train": train_cfg.to_dict(), "evaluation": evaluation,
        "seed": args.seed, "device": str(device), "checkpoint": args.checkpoint,
    }
    result = {"config": config, "splits": splits}
    table = gaps_markdown(result)
    timings = {"train": train_seconds, **{f"evaluate_{k}": v for k, v in seconds.items()}, "total": time.perf_counter() - started}
    shares = {}  # each rank's blocks of each split, as split_summary assigned them
    for split, x in points.items():
        blocks = eval_blocks(len(x), args.eval_block, size)
        shares[split] = [[list(blocks[k]) for k in rank_blocks(blocks, r, size)] for r in range(size)]
    info = {**run_info(timings), "world_size": size, "shares": shares}
    folder.write(table, {"gaps.json": result, "gaps.md": table, "run_info.json": info})
    print(f"wrote {os.path.join(args.out, 'gaps.json')} and gaps.md ({time.perf_counter() - started:.0f} s)")
    return result


def _devices(text: str) -> int | str:
    """``--devices`` as Lightning takes it: a count >= 1, -1 (all), "auto", or device indices such as "0,1"."""
    text = text.strip()
    if text == "auto":
        return text
    if text == "-1":
        return -1
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if re.fullmatch(r"\d+(,\d+)+", text):
        return text
    raise ValueError(f"--devices must be a count >= 1, -1 (every device), 'auto' or indices such as 0,1; got {text!r}")


def cli(argv: list[str] | None = None) -> int:
    return run_cli(parse, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
