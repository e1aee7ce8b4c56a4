"""Compare inference algorithms on one model: ``python -m benchmarks.compare``.

Trains the same model once per (objective, K) pair of ``--objectives`` x
``--num-samples``, each from the same initialization, on the same data in the same
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
import csv
import json
import math
import os
import sys
import time
from typing import Any

import lightning.pytorch as pl
import pyro
import torch

from benchmarks.datasets import Data, load_dataset
from benchmarks.options import ARCHITECTURE, add_data_arguments, add_model_arguments, run_cli, run_info
from inference.diagnostics import ACTIVE_THRESHOLD, active_units, gradient_snr
from inference.estimators import MAX_ELEMENTS, check_num_samples, elbo, log_likelihood
from inference.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from inference.objectives import NO_WARMUP, TRAINING_OBJECTIVES, make_loss
from inference.training import DEVICES, LR_SCHEDULES, TrainConfig, fit, resolve_device
from ppl_models import MODEL_LIKELIHOODS, MODELS, build_model, model_config

#: Published set-ups. Values are defaults for options not given on the command line.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # Burda, Grosse & Salakhutdinov (2016): dynamically binarized MNIST, 1 stochastic layer of 50 units with two
    # deterministic tanh layers of 200 (--model hvae for their 2-layer model: 100-50 latents), Adam
    # (eps 1e-4), batch 20, learning rate 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7 (3280 epochs), test NLL with K = 5000.
    "iwae-mnist": {
        "dataset": "mnist", "likelihood": "bernoulli", "binarization": "dynamic", "model": "vae",
        "latent_dim": 50, "hidden": [200, 200], "encoder_hidden": [200, 200], "activation": "tanh",
        "objectives": "elbo,iwae", "num_samples": "1,5,50", "epochs": 3280, "batch_size": 20, "lr": 1e-3,
        "lr_schedule": "iwae", "kl_warmup_epochs": 0.0, "log_px_samples": 5000,
    },
    # Sigmoid belief nets on MNIST binarized once (Mnih & Gregor 2014; Mnih & Rezende 2016): SBN-200 by default
    # (--layers 200,200 or 200,200,200 for the deeper nets), NVIL (tracegraph with nvil baselines) against VIMCO.
    "sbn-mnist": {
        "dataset": "mnist", "likelihood": "bernoulli", "binarization": "static", "model": "sbn", "layers": [200],
        "baseline": "nvil", "objectives": "tracegraph,vimco", "num_samples": "1,5,50", "epochs": 100,
        "batch_size": 24, "lr": 3e-4, "lr_schedule": "constant", "kl_warmup_epochs": 0.0, "log_px_samples": 5000,
    },
}

#: Published test NLLs (nats) on dynamically binarized MNIST, Burda et al. (2016), Table 1: (model, objective, K).
PUBLISHED = {
    ("vae", "elbo", 1): 86.76, ("vae", "iwae", 5): 85.54, ("vae", "iwae", 50): 84.78,
    ("hvae", "elbo", 1): 85.33, ("hvae", "iwae", 50): 82.90,
}

DEFAULTS = {
    "dataset": "digits", "model": "vae", "objectives": "elbo,iwae,iwae-dreg", "num_samples": "1,5", "epochs": 20,
    "batch_size": 100, "lr": 1e-3, "lr_schedule": "constant", "kl_warmup_epochs": 0.0, "log_px_samples": 5000,
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=("none", *PROTOCOLS), default="none", help="preset a published set-up (default: none)")
    add_data_arguments(p)
    add_model_arguments(p)
    train = p.add_argument_group("training (the same for every run)")
    train.add_argument("--objectives", default=None, help=f"comma-separated objectives from {', '.join(TRAINING_OBJECTIVES)} (default: {DEFAULTS['objectives']})")
    train.add_argument("--num-samples", default=None, help=f"comma-separated K, samples per datapoint per step (default: {DEFAULTS['num_samples']})")
    train.add_argument("--epochs", type=int, default=None, help=f"default: {DEFAULTS['epochs']}")
    train.add_argument("--batch-size", type=int, default=None, help=f"default: {DEFAULTS['batch_size']}")
    train.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default: {DEFAULTS['lr']})")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None, help="constant (default) or iwae (3^i-epoch stages)")
    train.add_argument("--kl-warmup-epochs", type=float, default=None, help="linear KL warm-up for ELBO objectives (default: 0)")
    train.add_argument("--resume", action="store_true", help="reuse finished runs in OUT/runs and continue unfinished ones")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--test-points", type=int, default=None, help="test datapoints to evaluate (default: the whole test split)")
    ev.add_argument("--log-px-samples", type=int, default=None, help="K for the test log p(x) (default: 5000)")
    ev.add_argument("--elbo-samples", type=int, default=100, help="samples for the test ELBO (default: %(default)s)")
    ev.add_argument("--snr-draws", type=int, default=100, help="gradient draws for the SNR (default: %(default)s)")
    ev.add_argument("--curve-points", type=int, default=500, help="test points for the learning curve (default: %(default)s)")
    ev.add_argument("--curve-samples", type=int, default=100, help="K of the learning curve's IWAE bound (default: %(default)s)")
    ev.add_argument("--curve-steps", type=int, default=None, help="also evaluate the curve every this many steps (default: once per epoch)")
    ev.add_argument("--max-elements", type=int, default=MAX_ELEMENTS, help="memory budget per chunk of samples (default: 2**26)")
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=DEVICES, default="cpu")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default=os.path.join("results", "compare"), help="output folder (default: %(default)s)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: when attached to a terminal)")
    return p


def _setting(args: argparse.Namespace, key: str) -> Any:
    """The explicit option, else the protocol's preset, else the default."""
    value = getattr(args, key, None)
    if value is not None:
        return value
    preset = PROTOCOLS.get(args.protocol, {})
    return preset.get(key, DEFAULTS.get(key))


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


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], TrainConfig, list[str], list[int]]:
    """Data config, model config, the shared training config, objectives and sample counts; refuses bad settings."""
    objectives = parse_list(_setting(args, "objectives"), "--objectives")
    for name in objectives:
        if name not in TRAINING_OBJECTIVES:
            raise ValueError(f"unknown objective {name!r} in --objectives; choose from {', '.join(TRAINING_OBJECTIVES)}")
    counts = parse_list(_setting(args, "num_samples"), "--num-samples", int)
    for k in counts:
        check_num_samples(k, "each K in --num-samples")
    for key in ("elbo_samples", "snr_draws", "curve_points", "curve_samples", "max_elements"):
        check_num_samples(getattr(args, key), "--" + key.replace("_", "-"))
    if args.curve_steps is not None:
        check_num_samples(args.curve_steps, "--curve-steps")
    if args.snr_draws < 2:
        raise ValueError(f"--snr-draws must be >= 2 to measure a standard deviation, got {args.snr_draws}")
    check_num_samples(_setting(args, "log_px_samples"), "--log-px-samples (K)")
    name = _setting(args, "model")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    likelihood = _setting(args, "likelihood") or MODEL_LIKELIHOODS[name][0]
    data_cfg = {
        "dataset": _setting(args, "dataset"), "likelihood": likelihood,
        "binarization": _setting(args, "binarization") or ("dynamic" if likelihood == "bernoulli" else None), "binarize_seed": 0,
    }
    data_dim = 64 if data_cfg["dataset"] == "digits" else 784
    explicit = {k: getattr(args, k) for k in ARCHITECTURE if getattr(args, k) is not None}  # refused by name if they do not apply
    own = model_config(name, data_dim, likelihood)
    preset = {k: v for k, v in PROTOCOLS.get(args.protocol, {}).items() if k in ARCHITECTURE and k in own}
    model_cfg = model_config(name, data_dim, likelihood, **{**preset, **explicit})
    train = TrainConfig(
        epochs=_setting(args, "epochs"), batch_size=_setting(args, "batch_size"), lr=_setting(args, "lr"),
        lr_schedule=_setting(args, "lr_schedule"), kl_warmup_epochs=_setting(args, "kl_warmup_epochs"), seed=args.seed,
    )
    return data_cfg, model_cfg, train, objectives, counts


class LearningCurve(pl.Callback):
    """The IWAE bound with ``samples`` samples on fixed test points after every epoch (and every ``every_steps`` steps),
    and the wall time of the training steps alone.

    Points are kept in ``path`` (rewritten atomically after each), so a resumed run keeps its earlier ones.
    The evaluation draws from a forked random generator: training sees the same random numbers with or without it.
    """

    def __init__(self, model, guide, x: torch.Tensor, samples: int, seed: int, max_elements: int, path: str, every_steps: int | None = None):
        super().__init__()
        self.model, self.guide, self.x, self.samples, self.seed, self.max_elements = model, guide, x, samples, seed, max_elements
        self.path, self.every_steps = path, every_steps
        self.points: list[dict[str, float]] = []
        if os.path.exists(path):
            with open(path) as f:
                self.points = json.load(f)
        self.step_seconds = 0.0
        self.steps = 0
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_seconds += time.perf_counter() - self._t0
        self.steps += 1
        step = trainer.global_step
        if self.every_steps and step % self.every_steps == 0 and batch_idx + 1 < trainer.num_training_batches:
            self._evaluate(trainer, pl_module, step)  # (the last batch of an epoch is evaluated at the epoch's end)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._evaluate(trainer, pl_module, trainer.global_step)

    def _evaluate(self, trainer, pl_module, step: int) -> None:
        if not trainer.is_global_zero:
            return
        with torch.random.fork_rng(devices=[]):
            pyro.set_rng_seed(self.seed * 7919 + step)
            value = log_likelihood(self.model, self.guide, self.x.to(pl_module.device), self.samples, max_elements=self.max_elements).value
        epoch = trainer.current_epoch + (step - trainer.current_epoch * trainer.num_training_batches) / trainer.num_training_batches
        self.points.append({"step": step, "epoch": round(epoch, 4), "bound": float(value.mean()), "bound_se": float(value.std() / math.sqrt(len(value)))})
        atomic_write_json(self.path, self.points)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    n = len(values)
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else math.nan


def parameter_groups(model, guide) -> dict[str, list[torch.nn.Parameter]]:
    """Decoder = the model's parameters; encoder = the guide's, without baseline networks (fitted, not estimated)."""
    decoder = [p for p in model.parameters() if p.requires_grad]
    encoder = [p for n, p in guide.named_parameters() if p.requires_grad and "baseline" not in n]
    return {"encoder": encoder, "decoder": decoder}


def evaluate(model, guide, objective: str, k: int, data: Data, x_test: torch.Tensor, args, log_px_samples: int, seed: int, device) -> dict[str, Any]:
    """Test log p(x), test ELBO, active units and gradient SNR of a trained pair."""
    out: dict[str, Any] = {}
    pyro.set_rng_seed(seed + 1)
    log_px = log_likelihood(model, guide, x_test, log_px_samples, max_elements=args.max_elements)
    out["test_log_px"], out["test_log_px_se"] = _mean_se(log_px.value)
    out["test_log_px_mc_se"] = float(log_px.stderr.pow(2).mean().sqrt() / math.sqrt(len(x_test)))
    pyro.set_rng_seed(seed + 2)
    bound = elbo(model, guide, x_test, args.elbo_samples, max_elements=args.max_elements)
    out["test_elbo"], out["test_elbo_se"] = _mean_se(bound.value)
    pyro.set_rng_seed(seed + 3)
    units = active_units(model, guide, x_test[: min(len(x_test), 1000)])
    out["active_units"], out["latent_units"] = units.active, units.total
    out["active_per_site"] = {n: list(v) for n, v in units.per_site.items()}
    pyro.set_rng_seed(seed + 4)
    batch = data.eval_points("train", min(_setting(args, "batch_size"), len(data.train))).to(device)
    loss = make_loss(objective, model, guide, k)
    snr = gradient_snr(lambda x: loss(x) / len(x), batch, parameter_groups(model, guide), args.snr_draws)
    for group, s in snr.items():
        out[f"snr_{group}"], out[f"snr_{group}_median"], out[f"snr_{group}_components"] = s.mean, s.median, s.components
    return out


def _read_train_loss(run_dir: str) -> list[float]:
    """The training loss of every epoch, from the run's CSV log (which survives --resume)."""
    path = os.path.join(run_dir, "logs", "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")]


def run_one(objective: str, k: int, data: Data, model_cfg, base: TrainConfig, args, log_px_samples: int, device, progress: bool) -> dict[str, Any]:
    """Train and evaluate one (objective, K) pair from the shared initialization."""
    run_dir = os.path.join(args.out, "runs", f"{objective}-K{k}")
    done = os.path.join(run_dir, "run.json")
    if args.resume and os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model, guide = build_model(model_cfg)  # the same initial parameters for every run
    if hasattr(model, "init_from_data"):
        model.init_from_data(data.train, torch.Generator().manual_seed(args.seed))
    warmup = 0.0 if objective in NO_WARMUP else base.kl_warmup_epochs
    train = TrainConfig(**{**base.to_dict(), "objective": objective, "num_particles": k, "kl_warmup_epochs": warmup})
    x_curve = data.eval_points("test", min(args.curve_points, len(data.test)))
    resume = args.resume and os.path.exists(os.path.join(run_dir, "checkpoints", "last.ckpt"))
    curve_path = os.path.join(run_dir, "curve.json")
    if not resume and os.path.exists(curve_path):
        os.remove(curve_path)  # a fresh run: an earlier run's curve does not belong to it
    curve = LearningCurve(model, guide, x_curve, args.curve_samples, args.seed, args.max_elements, curve_path, args.curve_steps)
    t0 = time.perf_counter()
    fit(model, guide, data.train, train, transform=data.transform, out_dir=run_dir, resume=resume, device=args.device,
        progress=progress, run_config={"model": model_cfg, "data": {"dataset": data.name}}, callbacks=[curve])
    train_seconds = time.perf_counter() - t0
    model.to(device).eval()
    guide.to(device).eval()
    test_points = args.test_points or len(data.test)
    x_test = data.eval_points("test", test_points).to(device)
    result = {
        "objective": objective, "num_samples": k, "train": train.to_dict(), "train_seconds": train_seconds,
        "steps": curve.steps, "seconds_per_step": curve.step_seconds / max(curve.steps, 1),
        **evaluate(model, guide, objective, k, data, x_test, args, log_px_samples, args.seed, device),
    }
    result["curve"] = curve.points
    result["train_loss"] = _read_train_loss(run_dir)
    atomic_write_json(done, result)
    return result


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    model = cfg["model"]["name"]
    published = any((model, r["objective"], r["num_samples"]) in PUBLISHED for r in result["runs"]) and cfg["protocol"] == "iwae-mnist"
    lines = [
        f"# Inference algorithms compared: {model} on {cfg['data']['dataset']} ({cfg['data']['likelihood']}, {cfg['data']['binarization'] or 'continuous'})",
        "",
        f"Same initialization, data order and seed; {cfg['train']['epochs']} epoch{'s' if cfg['train']['epochs'] != 1 else ''} of batch {cfg['train']['batch_size']} "
        f"(Adam lr {cfg['train']['lr']}, {cfg['train']['lr_schedule']} schedule) for every run. "
        f"Test: {cfg['evaluation']['test_points']} points, log p̂(x) with K={cfg['evaluation']['log_px_samples']}, "
        f"ELBO with {cfg['evaluation']['elbo_samples']} samples; ± is the standard error over test points.",
        "",
    ]
    header = "| objective | K | test log p̂(x) | test ELBO | active units | SNR encoder | SNR decoder | ms/step |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if published:
        header += " published −log p(x) |"
        rule += "---:|"
    lines += [header, rule]
    for r in result["runs"]:
        row = (
            f"| {r['objective']} | {r['num_samples']} | {r['test_log_px']:.2f} ± {r['test_log_px_se']:.2f} | "
            f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f} | {r['active_units']}/{r['latent_units']} | "
            f"{r['snr_encoder']:.3f} | {r['snr_decoder']:.3f} | {1000 * r['seconds_per_step']:.1f} |"
        )
        if published:
            ref = PUBLISHED.get((model, r["objective"], r["num_samples"]))
            row += f" {ref:.2f} |" if ref is not None else " |"
        lines.append(row)
    for s in result["skipped"]:
        lines.append(f"\nSkipped {s['objective']} with K={s['num_samples']}: {s['reason']}")
    lines += ["", "SNR: mean over parameter components of |E[gradient]| / sd[gradient] of the objective's own estimator "
              f"({cfg['evaluation']['snr_draws']} draws on one training batch); active units: variance over test points of "
              f"the posterior mean > {ACTIVE_THRESHOLD}."]
    if published:
        lines.append("Published: Burda, Grosse & Salakhutdinov (2016), Table 1, negative test log-likelihood after 3280 epochs.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in result["runs"]:
        pts = r["curve"]
        ax.plot([p["step"] for p in pts], [p["bound"] for p in pts], marker="o" if len(pts) < 30 else None, label=f"{r['objective']} K={r['num_samples']}")
    ev = result["config"]["evaluation"]
    ax.set_xlabel("training step")
    ax.set_ylabel(f"test IWAE bound, K={ev['curve_samples']} (nats)")
    ax.set_title(f"{result['config']['model']['name']} on {result['config']['data']['dataset']}: {ev['curve_points']} test points")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def main(args: argparse.Namespace) -> dict[str, Any]:
    data_cfg, model_cfg, base, objectives, counts = resolve(args)
    device = resolve_device(args.device)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    started = time.perf_counter()
    data = load_dataset(data_cfg["dataset"], data_cfg["likelihood"], data_cfg["binarization"], data_root=args.data_root, download=args.download)
    if args.test_points is not None:
        data.eval_points("test", args.test_points)  # refuses an impossible size before any training
    log_px_samples = _setting(args, "log_px_samples")
    runs, skipped = [], []
    model, guide = build_model(model_cfg)
    for objective in objectives:
        for k in counts:
            try:
                make_loss(objective, model, guide, k)
            except ValueError as err:
                skipped.append({"objective": objective, "num_samples": k, "reason": str(err)})
                continue
            print(f"[{objective}, K={k}] training {base.epochs} epochs", file=sys.stderr)
            runs.append(run_one(objective, k, data, model_cfg, base, args, log_px_samples, device, progress))
    if not runs:
        raise ValueError("no (objective, K) pair of --objectives and --num-samples can run: " + "; ".join(s["reason"] for s in skipped))
    config = {
        "protocol": args.protocol, "data": data_cfg, "model": model_cfg, "train": base.to_dict(), "objectives": objectives,
        "num_samples": counts, "seed": args.seed, "device": str(device),
        "evaluation": {
            "test_points": args.test_points or len(data.test), "log_px_samples": log_px_samples, "elbo_samples": args.elbo_samples,
            "snr_draws": args.snr_draws, "curve_points": min(args.curve_points, len(data.test)), "curve_samples": args.curve_samples,
            "curve_steps": args.curve_steps,
            "active_threshold": ACTIVE_THRESHOLD,
        },
    }
    result = {"config": config, "runs": runs, "skipped": skipped}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "compare.json"), result)
    atomic_write_text(os.path.join(args.out, "compare.md"), markdown(result))
    plot(result, os.path.join(args.out, "compare.png"))
    atomic_write_json(os.path.join(args.out, "run_info.json"), run_info(time.perf_counter() - started))
    print(markdown(result))
    print(f"wrote {os.path.join(args.out, 'compare.json')}, compare.md and compare.png ({time.perf_counter() - started:.0f} s)")
    return result


def cli(argv: list[str] | None = None) -> int:
    return run_cli(make_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
