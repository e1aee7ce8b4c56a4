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
import math
import os
import sys
import time
from typing import Any

import pyro
import torch

from benchmarks.datasets import Data, load_dataset
from benchmarks.options import ARCHITECTURE, add_data_arguments, add_model_arguments, run_cli, run_info
from inference.estimators import MAX_ELEMENTS, check_num_samples
from inference.ais import INITS, SCHEDULES, AISOptions, HMCConfig
from inference.gaps import LOG_PX_METHODS, QUANTITIES, GapDecomposition, gap_decomposition
from inference.io import atomic_write_json, atomic_write_text, load_checkpoint
from inference.local import AdamConfig, StoppingRule
from inference.objectives import NO_WARMUP
from inference.training import CHECKPOINT_KEYS, DEVICES, LR_SCHEDULES, WARMUPS, TrainConfig, fit, resolve_device
from inference.enumeration import exact_log_marginal, is_enumerable
from inference.families import LOCAL_FAMILIES, FlowOptions
from ppl_models import MODEL_LIKELIHOODS, MODELS, build_model, model_config

MODEL_OPTIONS = ("dataset", "model", "likelihood", "binarization", *ARCHITECTURE)
#: Training defaults that differ by model (the rest come from TrainConfig).
TRAIN_DEFAULTS = {
    "gmm": {"objective": "enum", "kl_warmup_epochs": 0.0, "lr": 1e-2},
    "sbn": {"objective": "tracegraph", "kl_warmup_epochs": 0.0, "lr": 3e-4},
}
#: Options of TrainConfig that the command line sets (with --checkpoint they come from the checkpoint).
TRAIN_CONFIG_OPTIONS = ("objective", "num_particles", "epochs", "batch_size", "lr", "adam_eps", "lr_schedule", "kl_warmup_epochs", "warmup")
TRAIN_OPTIONS = (*TRAIN_CONFIG_OPTIONS, "resume")
LABELS = {
    "log_px": "log p(x)", "elbo_local": "L[q*]", "elbo_amortized": "L[q]",
    "approximation_gap": "approximation gap", "amortization_gap": "amortization gap", "inference_gap": "inference gap",
}


#: Published set-ups: defaults for every option not given on the command line.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # Cremer, Li & Duvenaud (2018), as their code (chriscremer/Inference-Suboptimality) runs it on MNIST: a fixed binarization,
    # encoder 784-200-200-(2x50), decoder 50-200-200-784, tanh, batch 20, Adam (eps 1e-8) with the IWAE schedule over 3280
    # epochs, the entropy term -log q warmed up over 100 epochs; the first 100 training and 100 test points; local q* from
    # the prior N(0, I), Adam lr 1e-3, 50 samples per step, stopped when more than 10 windows of 100 steps in a row fail to
    # improve, no step cap; L[q*] and L[q] with 5000 samples; log p(x) the larger of AIS (100 chains, 5000 linear
    # intermediate distributions from the prior, 10 leapfrog steps, step size from 0.1) and IWAE with K = 5000.
    # Every remaining difference is listed in the README.
    "cremer-mnist": {
        "dataset": "mnist", "model": "vae", "likelihood": "bernoulli", "binarization": "static", "latent_dim": 50,
        "hidden": [200, 200], "encoder_hidden": [200, 200], "activation": "tanh", "batch_size": 20, "lr": 1e-3,
        "adam_eps": 1e-8, "lr_schedule": "iwae", "epochs": 3280, "kl_warmup_epochs": 100.0, "warmup": "entropy",
        "num_points": 100, "local_init": "prior", "local_lr": 1e-3, "local_samples": 50, "local_window": 100,
        "local_patience": 11, "local_max_steps": 1_000_000, "elbo_samples": 5000, "log_px": "max", "log_px_samples": 5000,
        "ais_chains": 100, "ais_steps": 5000, "ais_schedule": "linear", "ais_leapfrog": 10, "ais_step_size": 0.1, "ais_init": "prior",
    },
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gaps", description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=("none", *PROTOCOLS), default="none",
                   help="preset a published set-up; explicit options override it, e.g. --epochs 5 for a reduced budget (default: none)")
    add_data_arguments(p)
    add_model_arguments(p)
    train = p.add_argument_group("training")
    train.add_argument("--objective", default=None, help="elbo (Trace_ELBO, default), meanfield (TraceMeanField_ELBO), captured-elbo (Trace_ELBO's estimator replayed from a recorded graph; static, reparameterized programs), tracegraph (TraceGraph_ELBO with the guide's baselines; default for sbn), enum (exact marginal by TraceEnum_ELBO; default for gmm), iwae, iwae-stl, iwae-dreg, vimco (importance-weighted bound per datapoint with --num-particles K samples), rws, rws-sleep, rws-both (reweighted wake-sleep: wake, sleep or both guide updates), wake-sleep, renyi (Pyro's RenyiELBO, alpha=0, for comparison)")
    train.add_argument("--num-particles", type=int, default=None, help="samples per datapoint per step: K for the iwae objectives (default: 1)")
    train.add_argument("--epochs", type=int, default=None, help="default: 100")
    train.add_argument("--batch-size", type=int, default=None, help="default: 100")
    train.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 1e-3)")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None, help="constant (default) or iwae (3^i-epoch stages)")
    train.add_argument("--kl-warmup-epochs", type=float, default=None, help="linear KL warm-up length (default: 10)")
    train.add_argument("--warmup", choices=WARMUPS, default=None, help="what the warm-up weight scales: kl (log p(z) - log q, default) or entropy (-log q alone, as Cremer et al.'s code)")
    train.add_argument("--adam-eps", type=float, default=None, help="Adam's epsilon (default: 1e-4, Burda et al. 2016)")
    train.add_argument("--checkpoint", default=None, help="evaluate this checkpoint instead of training")
    train.add_argument("--resume", action="store_true", help="continue training from OUT/checkpoints/last.ckpt")
    evaluation = p.add_argument_group("evaluation")
    evaluation.add_argument("--num-points", type=int, default=50, help="datapoints per split (default: %(default)s)")
    evaluation.add_argument("--log-px-samples", type=int, default=5000, help="K for log p(x) (default: %(default)s)")
    evaluation.add_argument("--elbo-samples", type=int, default=1000, help="samples for each ELBO (default: %(default)s)")
    evaluation.add_argument("--local-samples", type=int, default=50, help="samples per local q* step (default: %(default)s)")
    evaluation.add_argument("--local-lr", type=float, default=1e-3, help="local q* Adam learning rate (default: %(default)s)")
    evaluation.add_argument("--local-window", type=int, default=100, help="steps per averaging window (default: %(default)s)")
    evaluation.add_argument("--local-patience", type=int, default=10, help="windows without improvement before stopping (default: %(default)s)")
    evaluation.add_argument("--local-max-steps", type=int, default=20_000, help="cap on local q* steps (default: %(default)s)")
    evaluation.add_argument("--local-init", choices=("encoder", "prior"), default="encoder")
    evaluation.add_argument("--local", default=None, help=f"further local q* families to fit and report beside the guide's own (which always defines the gaps), comma-separated: {', '.join(LOCAL_FAMILIES)} (default: none)")
    evaluation.add_argument("--local-flow-layers", type=int, default=2, help="local iaf/coupling q*: flows per datapoint (default: %(default)s)")
    evaluation.add_argument("--local-flow-hidden", type=int, default=100, help="local iaf/coupling q*: hidden units per flow, 0 for affine (default: %(default)s)")
    evaluation.add_argument("--log-px", choices=LOG_PX_METHODS, default="iwae", help="log p(x) estimator: iwae (importance-weighted bound, proposal the best of q and q*), ais (annealed importance sampling), or max (both; the higher mean is reported, both are recorded) (default: %(default)s)")
    evaluation.add_argument("--ais-chains", type=int, default=100, help="AIS chains per datapoint (default: %(default)s)")
    evaluation.add_argument("--ais-steps", type=int, default=1000, help="AIS intermediate distributions (default: %(default)s; the reference uses 10000)")
    evaluation.add_argument("--ais-leapfrog", type=int, default=10, help="HMC leapfrog steps per AIS transition (default: %(default)s)")
    evaluation.add_argument("--ais-step-size", type=float, default=0.05, help="initial HMC step size, adapted toward 0.65 acceptance (default: %(default)s)")
    evaluation.add_argument("--ais-schedule", choices=SCHEDULES, default="sigmoid", help="annealing schedule (default: %(default)s)")
    evaluation.add_argument("--ais-pilot-chains", type=int, default=HMCConfig.pilot_chains,
                            help="chains per datapoint of the pilot run that adapts the HMC step sizes, then frozen for the weighted chains (default: %(default)s)")
    evaluation.add_argument("--ais-init", choices=INITS, default="prior", help="AIS initial distribution: the prior or the amortized guide (default: %(default)s)")
    evaluation.add_argument("--max-elements", type=int, default=MAX_ELEMENTS,
                            help="memory budget: tensor elements one chunk of samples may create (default: 2**26; raise it on a GPU)")
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=DEVICES, default="cpu")
    run.add_argument("--devices", default="1", help="devices for training (Lightning), e.g. 2 with --strategy ddp")
    run.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default=os.path.join("results", "gaps"), help="output folder (default: %(default)s)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: when attached to a terminal)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before any data is loaded or any time is spent."""
    check_num_samples(args.num_points, "--num-points")
    check_num_samples(args.log_px_samples, "--log-px-samples (K)")
    check_num_samples(args.elbo_samples, "--elbo-samples")
    check_num_samples(args.local_samples, "--local-samples")
    for name in ("local_window", "local_patience", "local_max_steps", "max_elements"):
        check_num_samples(getattr(args, name), "--" + name.replace("_", "-"))
    if not args.local_lr > 0:
        raise ValueError(f"--local-lr must be positive, got {args.local_lr}")
    check_num_samples(args.local_flow_layers, "--local-flow-layers")
    ais_options(args)  # refuses bad AIS settings before any training
    if args.local_flow_hidden < 0:
        raise ValueError(f"--local-flow-hidden must be >= 0, got {args.local_flow_hidden}")
    for family in _families(args.local):
        if family not in LOCAL_FAMILIES:
            raise ValueError(f"unknown local family {family!r} in --local; choose from {', '.join(LOCAL_FAMILIES)}")
    if args.checkpoint:
        given = [o for o in TRAIN_OPTIONS if getattr(args, o) not in (None, False)]
        if given:
            raise ValueError(f"--checkpoint evaluates a trained model; drop the training option(s) {', '.join('--' + g.replace('_', '-') for g in given)}")


def ais_options(args: argparse.Namespace) -> AISOptions:
    """The AIS settings of the command line (checked)."""
    check_num_samples(args.ais_chains, "--ais-chains")
    check_num_samples(args.ais_steps, "--ais-steps")
    check_num_samples(args.ais_pilot_chains, "--ais-pilot-chains")
    hmc = HMCConfig(leapfrog_steps=args.ais_leapfrog, step_size=args.ais_step_size,
                    max_step_size=max(HMCConfig.max_step_size, args.ais_step_size), pilot_chains=args.ais_pilot_chains)
    return AISOptions(args.ais_chains, args.ais_steps, args.ais_schedule, args.ais_init, hmc)


def _families(text: str | None) -> list[str]:
    return [] if not text else [f.strip() for f in text.split(",") if f.strip()]


def local_families(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--local`` families: fitted beside the guide's own family, which always defines the gaps."""
    return tuple(f for f in dict.fromkeys(_families(args.local)) if f != "guide")


def _explicit(args: argparse.Namespace, saved: dict[str, Any], key: str, default: Any) -> Any:
    """The value of a model option: the explicit one, else the checkpoint's, else ``default``; refusing conflicts."""
    value = getattr(args, key)
    if key in saved:
        if value is not None and value != saved[key]:
            raise ValueError(f"--{key.replace('_', '-')} {value} conflicts with the checkpoint, which has {saved[key]!r}")
        return saved[key]
    return default if value is None else value


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], TrainConfig, dict | None]:
    """Data config, model config, training config and (if any) the loaded checkpoint."""
    checkpoint = load_checkpoint(args.checkpoint, required=CHECKPOINT_KEYS) if args.checkpoint else None
    saved = checkpoint["config"] if checkpoint else {}
    saved_data, saved_model = saved.get("data", {}), saved.get("model", {})
    flat = {**{k: v for k, v in saved_data.items()}, **{("model" if k == "name" else k): v for k, v in saved_model.items()}}
    name = _explicit(args, flat, "model", "vae")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    likelihood = _explicit(args, flat, "likelihood", MODEL_LIKELIHOODS[name][0])
    data_cfg = {
        "dataset": _explicit(args, flat, "dataset", "digits"),
        "likelihood": likelihood,
        "binarization": _explicit(args, flat, "binarization", "dynamic" if likelihood == "bernoulli" else None),
        "binarize_seed": saved_data.get("binarize_seed", 0),
    }
    overrides = {k: _explicit(args, flat, k, None) for k in ARCHITECTURE}
    data_dim = saved_model.get("data_dim")
    if checkpoint is None:
        data_dim = 64 if data_cfg["dataset"] == "digits" else 784
    model_cfg = model_config(name, data_dim, likelihood, **overrides)
    if checkpoint:
        train = TrainConfig(**saved["train"])
    else:
        objective = args.objective or TRAIN_DEFAULTS.get(name, {}).get("objective", "elbo")
        warmup = 0.0 if objective in NO_WARMUP else 10.0  # warm-up scales an ELBO's KL; these bounds have none
        defaults = TrainConfig(**{"kl_warmup_epochs": warmup, "seed": args.seed, **TRAIN_DEFAULTS.get(name, {})})
        train = TrainConfig(**{
            **defaults.to_dict(),
            **{k: getattr(args, k) for k in TRAIN_CONFIG_OPTIONS if getattr(args, k) is not None},
        })
    return data_cfg, model_cfg, train, checkpoint


def exact_answers(result: GapDecomposition, model, guide, x: torch.Tensor, max_elements: int) -> dict[str, float]:
    """Exact log p(x) where it is known, and the exact approximation gap where the family allows.

    log p(x): closed form for PPCA and the mixture, enumeration for small discrete
    models. Approximation gap: PPCA's closed form for FFG, 0 for a full-covariance q*
    on PPCA and for a categorical q* (their families hold the exact posterior).
    """
    with torch.no_grad():
        if hasattr(model, "log_marginal"):
            exact = model.log_marginal(x).double()
            source = "closed form"
        elif is_enumerable(model, guide, x):
            exact = exact_log_marginal(model, guide, x, max_elements=max_elements)
            source = "enumeration"
        else:
            return {}
    n = len(x)
    out: dict[str, Any] = {
        "exact_log_px": float(exact.mean()),
        "exact_log_px_se": float(exact.std() / math.sqrt(n)) if n > 1 else math.nan,
        "exact_log_px_source": source,
    }
    gap = None
    if hasattr(model, "approximation_gap") and result.family == "ffg":
        with torch.no_grad():
            gap = float(model.approximation_gap(x).double().mean())
    elif (hasattr(model, "approximation_gap") and result.family == "full") or result.family == "categorical":
        gap = 0.0
    if gap is not None:
        out["exact_approximation_gap"] = gap
        out["exact_approximation_gap_se"] = 0.0
    return out


def summarize_split(result: GapDecomposition, model, guide, x: torch.Tensor, max_elements: int = MAX_ELEMENTS) -> dict[str, Any]:
    return {**result.summary(), **exact_answers(result, model, guide, x, max_elements)}


def _other_families(splits: dict[str, dict[str, Any]]) -> list[str]:
    first = next(iter(splits.values()))
    return [k[len("elbo_local_"):] for k in first if k.startswith("elbo_local_") and not k.endswith("_se")]


def markdown_table(splits: dict[str, dict[str, Any]]) -> str:
    first = next(iter(splits.values()))
    family = first.get("local_family", "ffg")
    others = _other_families(splits)
    labels = {**LABELS, "elbo_local": f"L[q*_{family}]"}
    columns = [*QUANTITIES[:2], *(f"elbo_local_{o}" for o in others), *QUANTITIES[2:]]
    labels.update({f"elbo_local_{o}": f"L[q*_{o}]" for o in others})
    header = "| split | N | " + " | ".join(labels[q] for q in columns) + " |"
    rule = "|---|---:|" + "---:|" * len(columns)
    rows = [header, rule]
    for split, s in splits.items():
        cells = [f"{s[q]:.3f} ± {s[q + '_se']:.3f}" for q in columns]
        rows.append(f"| {split} | {s['n_points']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    guide = cfg["model"].get("guide", "ffg")
    lines = [
        f"# Inference gaps: {cfg['model']['name']} ({guide} guide) on {cfg['data']['dataset']} ({cfg['data']['likelihood']})",
        "",
        "Nats per datapoint; mean ± standard error of the mean over the evaluated datapoints.",
        "",
        markdown_table(result["splits"]),
        "",
        "Monte Carlo standard errors alone (given these datapoints):",
        "",
    ]
    for split, s in result["splits"].items():
        mc = ", ".join(f"{LABELS[q]} {s[q + '_mc_se']:.4f}" for q in QUANTITIES)
        lines.append(f"- {split}: {mc}")
        proposal = (f"; a q* was the log p(x) proposal for {100 * s['log_px_proposal_local_fraction']:.0f}% of points"
                    if s.get("log_px_method", "iwae") == "iwae" else "")
        lines.append(
            f"  local q* ({s.get('local_family', 'ffg')}): {100 * s['local_converged_fraction']:.0f}% stopped by the rule, "
            f"{s['local_steps_mean']:.0f} steps on average{proposal}"
        )
        if "pareto_k_mean" in s:
            flagged = s["pareto_k_high_points"]
            lines.append(
                f"  PSIS k̂ of the log p(x) weights: mean {s['pareto_k_mean']:.2f}, max {s['pareto_k_max']:.2f}; "
                + (f"**{100 * s['pareto_k_high_fraction']:.0f}% of points above 0.7 (unreliable estimates): {', '.join(map(str, flagged[:20]))}"
                   + (" ..." if len(flagged) > 20 else "") + "**" if flagged else "no point above 0.7")
            )
        if "exact_log_px" in s:
            gap = s.get("exact_approximation_gap")
            lines.append(
                f"  exact ({s['exact_log_px_source']}): log p(x) {s['exact_log_px']:.3f}"
                + (f", approximation gap {gap:.4f}" if gap is not None else "")
            )
    ev = cfg["evaluation"]
    ais_text = (f"AIS with {ev.get('ais_chains')} chains, {ev.get('ais_steps')} {ev.get('ais_schedule')} steps from the {ev.get('ais_init')}, "
                f"HMC with {ev.get('ais_leapfrog')} leapfrog steps")
    iwae_text = f"IWAE bound with K={ev['log_px_samples']}"
    estimator = {"ais": ais_text, "iwae": iwae_text}.get(ev.get("log_px"), f"the higher of {ais_text} and the {iwae_text}")
    for split, s in result["splits"].items():
        if "log_px_ais" in s and "log_px_iwae" in s:
            lines.append(f"- {split}: log p(x) by AIS {s['log_px_ais']:.3f} ± {s['log_px_ais_se']:.3f}, by IWAE "
                         f"{s['log_px_iwae']:.3f} ± {s['log_px_iwae_se']:.3f}; reported: {s['log_px_method']}")
    lines += ["", f"log p(x): {estimator}; ELBOs with {ev['elbo_samples']} samples; "
              f"local q*: Adam lr {ev['local_lr']}, {ev['local_samples']} samples/step, stop after {ev['local_patience']} "
              f"windows of {ev['local_window']} steps without improvement (cap {ev['local_max_steps']})."]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    data_cfg, model_cfg, train_cfg, checkpoint = resolve(args)
    device = resolve_device(args.device)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    started = time.perf_counter()
    data: Data = load_dataset(
        data_cfg["dataset"], data_cfg["likelihood"], data_cfg["binarization"],
        data_root=args.data_root, download=args.download, binarize_seed=data_cfg["binarize_seed"],
    )
    if data.data_dim != model_cfg["data_dim"]:
        raise ValueError(f"the model expects {model_cfg['data_dim']}-dimensional data but {data.name} has {data.data_dim} dimensions")
    points = {split: data.eval_points(split, args.num_points) for split in ("train", "test")}

    families = local_families(args)
    pyro.set_rng_seed(train_cfg.seed)
    model, guide = build_model(model_cfg)
    if checkpoint is None and hasattr(model, "init_from_data"):  # the mixture: means at random datapoints
        model.init_from_data(data.train, torch.Generator().manual_seed(train_cfg.seed))
    run_config = {"data": data_cfg, "model": model_cfg}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model_state"])
        guide.load_state_dict(checkpoint["guide_state"])
        train_seconds = 0.0
    else:
        t0 = time.perf_counter()
        trained = fit(
            model, guide, data.train, train_cfg, transform=data.transform, out_dir=args.out, resume=args.resume,
            device=args.device, devices=_devices(args.devices), strategy=args.strategy, progress=progress, run_config=run_config,
        )
        train_seconds = time.perf_counter() - t0
        if not trained.is_global_zero:
            return {}
    model.to(device).eval()
    guide.to(device).eval()

    evaluation = {
        "num_points": args.num_points, "log_px_samples": args.log_px_samples, "elbo_samples": args.elbo_samples,
        "local_samples": args.local_samples, "local_lr": args.local_lr, "local_window": args.local_window,
        "local_patience": args.local_patience, "local_max_steps": args.local_max_steps, "local_init": args.local_init,
        "max_elements": args.max_elements, "local_families": list(families),
        "local_flow_layers": args.local_flow_layers, "local_flow_hidden": args.local_flow_hidden, "log_px": args.log_px,
    }
    if args.log_px in ("ais", "max"):
        evaluation.update(ais_chains=args.ais_chains, ais_steps=args.ais_steps, ais_leapfrog=args.ais_leapfrog,
                          ais_step_size=args.ais_step_size, ais_schedule=args.ais_schedule, ais_init=args.ais_init,
                          ais_pilot_chains=args.ais_pilot_chains)
    splits, seconds = {}, {}
    for i, (split, x) in enumerate(points.items()):
        t0 = time.perf_counter()
        pyro.set_rng_seed(args.seed * 1000 + i + 1)
        result = gap_decomposition(
            model, guide, x.to(device), log_px_samples=args.log_px_samples, elbo_samples=args.elbo_samples,
            local_samples=args.local_samples, adam=AdamConfig(lr=args.local_lr),
            rule=StoppingRule(args.local_window, args.local_patience, args.local_max_steps),
            init=args.local_init, max_elements=args.max_elements, progress=progress,
            local_families=families, flow=FlowOptions(args.local_flow_layers, args.local_flow_hidden),
            log_px=args.log_px, ais_options=ais_options(args),
        )
        splits[split] = summarize_split(result, model, guide, x.to(device), args.max_elements)
        seconds[split] = time.perf_counter() - t0

    config = {
        "protocol": args.protocol, "data": data_cfg, "model": model_cfg, "train": train_cfg.to_dict(), "evaluation": evaluation,
        "seed": args.seed, "device": str(device), "checkpoint": args.checkpoint,
    }
    result = {"config": config, "splits": splits}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "gaps.json"), result)
    atomic_write_text(os.path.join(args.out, "gaps.md"), render_markdown(result))
    atomic_write_json(os.path.join(args.out, "run_info.json"), run_info(
        {"train": train_seconds, **{f"evaluate_{k}": v for k, v in seconds.items()}, "total": time.perf_counter() - started}
    ))
    print(render_markdown(result))
    print(f"wrote {os.path.join(args.out, 'gaps.json')} and gaps.md ({time.perf_counter() - started:.0f} s)")
    return result


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def protocol_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, its defaults set to the chosen ``--protocol`` (training presets dropped with ``--checkpoint``)."""
    parser = make_parser()
    known, _ = parser.parse_known_args(argv)
    if known.protocol != "none":
        preset = PROTOCOLS[known.protocol]
        if known.checkpoint:  # the model is trained already: only the evaluation settings apply
            preset = {k: v for k, v in preset.items() if k not in (*TRAIN_OPTIONS, *MODEL_OPTIONS)}
        parser.set_defaults(**preset)
    return parser


def cli(argv: list[str] | None = None) -> int:
    return run_cli(protocol_parser(argv), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
