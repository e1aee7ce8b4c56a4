"""Speed of our training step and of vectorized local q*: ``python -m benchmarks.speed``.

(a) Training step. Three ways to take one SVI step on the same VAE (MNIST
    sizes: 784-200-200-100 encoder, 50-200-200-784 decoder, Bernoulli
    likelihood, batch 100, single-sample ELBO, Adam), timed side by side in
    interleaved blocks so drifts in machine speed hit all of them alike:

    * ``pure``  — a hand-written PyTorch step: encoder, reparameterized sample,
      log-densities, backward, Adam;
    * ``core``  — our step: objective ``elbo`` (``Trace_ELBO``'s estimator, computed eagerly for a
      reparameterized guide) on the model/guide programs of :mod:`ppl_models`, backward, the same Adam;
    * ``captured`` — our step with objective ``captured-elbo``: the same
      estimator replayed from a recorded graph (:mod:`inference.objectives.capture`);
    * ``svi``   — the plain Pyro route for contrast: ``SVI`` + ``pyro.optim.Adam``
      on ``PyroModule`` programs with validation on (Pyro's defaults).

    and the steady-state step of the whole training loop of :func:`inference.training.fit`
    (our loop on Lightning Fabric: callbacks, checks, data slicing included) against two
    hand-written loops over the same batches: one taking the hand-written step (the loop
    and the objective's overhead together), one calling the same loss module as ``fit``
    (the loop's own overhead: the 1.05× target).

(b) Local q*: the vectorized optimizer (:func:`inference.local.optimize_local`
    on all points at once) against a Python loop calling it one datapoint at a
    time, same stopping rule, same model, on MNIST points.

(c) AIS: log-density-gradient evaluations per second of :func:`inference.ais.ais`
    vectorized over datapoints x chains, against a Python loop calling it one
    datapoint at a time with the same chains, schedule and HMC settings.

(d) Evaluation: :func:`inference.estimators.iwae_log_px` with K = 5000 (chunked, PSIS k-hat off)
    against a hand-written evaluator of the same bound (the same chunks, one ``logsumexp``).

``--device cuda`` runs everything on the GPU: every timer synchronizes the device before it reads
the clock (a GPU runs asynchronously; an unsynchronized timer measures kernel launches). ``--quick``
shrinks every size so the whole benchmark takes minutes (a GPU check) or seconds on a CPU (a test).
Writes ``speed.json`` and ``speed.md`` into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pyro
import torch
from torch import nn

from benchmarks.datasets import DEFAULT_DATA_ROOT, load_dataset
from benchmarks.options import run_cli
from benchmarks.outdir import OutputFolder
from benchmarks.report import speed_markdown
from inference.ais import HMCOptions, ais
from inference.estimators import iwae_log_px
from inference.local import StoppingRule, frozen, optimize_local
from inference.memory import MAX_ELEMENTS, chunk_size_for
from inference.objectives import make_loss
from inference.program import inspect_program
from inference.training import DEVICES, TrainOptions, epoch_permutation, fit, resolve_device
from inference.validation import seed as check_seed
from ppl_models import build_model, model_config

# ---- timing ------------------------------------------------------------------------


def clock(device: torch.device | str = "cpu"):
    """A ``perf_counter`` that first waits for ``device``'s queued work (CUDA runs asynchronously)."""
    device = torch.device(device)
    if device.type == "cuda":

        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return now
    return time.perf_counter


# ---- (a) training step ------------------------------------------------------------

_STANDARD_NORMAL = torch.distributions.Normal(0.0, 1.0)  #: the prior of the hand-written ELBO, built once


def hand_written_log_weights(decoder: nn.Module, loc: torch.Tensor, log_scale: torch.Tensor, points: torch.Tensor,
                             num_samples: int | None = None) -> torch.Tensor:
    r"""Log-weights of a Bernoulli VAE under q_i = N(loc_i, diag(exp(log_scale_i))^2), in plain PyTorch.

    :math:`\log p(x_i | z_s) + \log N(z_s; 0, I) - \log q_i(z_s)` with
    :math:`z_s = loc_i + exp(log\_scale_i) \epsilon_s` (reparameterized), shape
    ``(num_samples, len(points))``, or ``(len(points),)`` for one draw without a sample
    dimension when ``num_samples`` is None; their mean is the ELBO estimate that the
    hand-written training step and one local-FFG step differentiate, written without
    Pyro for the timing floor.
    """
    scale = log_scale.exp()
    shape = loc.shape if num_samples is None else (num_samples, *loc.shape)
    z = loc + scale * torch.randn(shape, dtype=loc.dtype, device=loc.device)
    log_lik = -nn.functional.binary_cross_entropy_with_logits(
        decoder(z), points.expand(*shape[:-1], points.shape[-1]), reduction="none").sum(-1)
    log_prior = _STANDARD_NORMAL.log_prob(z).sum(-1)
    log_q = torch.distributions.Normal(loc, scale, validate_args=False).log_prob(z).sum(-1)
    return log_lik + log_prior - log_q


def encoder_network(guide: nn.Module) -> nn.Module:
    """An FFG guide's network ``x -> [loc, log_scale]`` as one plain module, sharing the guide's parameters."""
    return nn.Sequential(guide.features, guide.head.params_net)


def pure_step_fn(encoder: nn.Module, decoder: nn.Module, lr: float, eps: float):
    """The hand-written PyTorch step of the identical VAE and estimator."""
    params = [*encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(params, lr=lr, eps=eps)

    def step(x: torch.Tensor) -> torch.Tensor:
        loc, log_scale = encoder(x).chunk(2, dim=-1)
        loss = -hand_written_log_weights(decoder, loc, log_scale, x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return step


def our_step_fn(model: nn.Module, guide: nn.Module, objective: str, lr: float, eps: float):
    """Our step: the training loss of ``objective`` (as inference.training builds it) + torch Adam."""
    loss_fn = make_loss(objective, model, guide)
    opt = torch.optim.Adam(loss_fn.parameters(), lr=lr, eps=eps)

    def step(x: torch.Tensor) -> torch.Tensor:
        with pyro.validation_enabled(False):
            loss = loss_fn(x) / len(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return step


def svi_step_fn(model: nn.Module, guide: nn.Module, lr: float, eps: float):
    """Plain Pyro: SVI + pyro.optim on PyroModule programs, validation on."""
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=False)
    pmodel, pguide = _as_pyro_module(model), _as_pyro_module(guide)
    svi = pyro.infer.SVI(pmodel, pguide, pyro.optim.Adam({"lr": lr, "eps": eps}), pyro.infer.Trace_ELBO())

    def step(x: torch.Tensor) -> float:
        with pyro.validation_enabled(True):
            return svi.step(x) / len(x)

    return step


def _as_pyro_module(module: nn.Module) -> nn.Module:
    """A PyroModule copy of ``module`` (parameters become pyro.param sites)."""
    clone = copy.deepcopy(module)
    pyro.nn.module.to_pyro_module_(clone)
    return clone


def time_blocks(steps: dict[str, Any], x_batches: list[torch.Tensor], repeats: int, device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Seconds per step of each step function, measured in interleaved blocks."""
    now = clock(device)
    for fn in steps.values():  # warm up
        for x in x_batches[:20]:
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = now()
            for x in x_batches:
                fn(x)
            times[name].append((now() - t0) / len(x_batches))
    return times


class _StepTimer(pl.Callback):
    """Seconds per training step over epochs 1.. (epoch 0 absorbs start-up), the device synchronized at both ends."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.now = clock(device)
        self.start = None
        self.steps = 0
        self.seconds = None

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == 1:
            self.start = self.now()

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if self.start is not None:
            self.steps += 1

    def on_train_end(self, trainer, module) -> None:
        self.seconds = (self.now() - self.start) / self.steps


def _trainer_seconds_per_step(data, epochs, batch_size, seed, objective, device: torch.device | str = "cpu") -> float:
    torch.manual_seed(seed)
    model, guide = build_model(model_config("vae", data.shape[1], "bernoulli"))
    timer = _StepTimer(device)
    config = TrainOptions(objective=objective, epochs=epochs, batch_size=batch_size, adam_eps=1e-4, seed=seed)
    fit(model, guide, data, config, callbacks=[timer], device=torch.device(device).type)
    return timer.seconds


def _timed_loop(step: Callable[[torch.Tensor], Any], data: torch.Tensor, epochs: int, batch_size: int, seed: int,
                device: torch.device | str) -> float:
    """Seconds per ``step(batch)`` of a hand-written loop over fit()'s batches (epoch 0 untimed)."""
    now = clock(device)
    n_batches = -(-len(data) // batch_size)
    t0, count = None, 0
    for epoch in range(epochs):
        if epoch == 1:
            t0 = now()
        perm = epoch_permutation(len(data), seed, epoch).to(data.device)
        for b in range(n_batches):
            step(data[perm[b * batch_size : (b + 1) * batch_size]])
            count += t0 is not None
    return (now() - t0) / count


def _loop_seconds_per_step(data, epochs, batch_size, seed, device: torch.device | str = "cpu") -> float:
    """The hand-written loop taking the hand-written step."""
    torch.manual_seed(seed)
    model, guide = build_model(model_config("vae", data.shape[1], "bernoulli"))
    model, guide, data = model.to(device), guide.to(device), data.to(device)
    return _timed_loop(pure_step_fn(encoder_network(guide), model.decoder, 1e-3, 1e-4), data, epochs, batch_size, seed, device)


def _own_loss_loop_seconds_per_step(data, epochs, batch_size, seed, objective, device: torch.device | str = "cpu") -> float:
    """The hand-written loop calling fit()'s loss module: zero_grad, backward, Adam, nothing else."""
    torch.manual_seed(seed)
    model, guide = build_model(model_config("vae", data.shape[1], "bernoulli"))
    model, guide, data = model.to(device), guide.to(device), data.to(device)
    loss_fn = make_loss(objective, model, guide)
    loss_fn.dataset_size = len(data)
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-3, eps=1e-4)

    def step(x: torch.Tensor) -> None:
        loss = loss_fn(x) / len(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _timed_loop(step, data, epochs, batch_size, seed, device)


def trainer_step_ratio(data: torch.Tensor, epochs: int, batch_size: int, seed: int, objective: str = "elbo",
                       repeats: int = 3, device: torch.device | str = "cpu") -> dict[str, float]:
    """Steady-state seconds per step of fit() vs hand-written loops over the same batches: with the hand-written step
    (``ratio``) and with fit()'s own loss module (``loop_ratio``: the loop's overhead alone).

    Each repeat runs the three back to back (epoch 0 untimed); a ratio is the median over repeats.
    """
    trainer, loop, own = [], [], []
    for _ in range(repeats):
        trainer.append(_trainer_seconds_per_step(data, epochs, batch_size, seed, objective, device))
        loop.append(_loop_seconds_per_step(data, epochs, batch_size, seed, device))
        own.append(_own_loss_loop_seconds_per_step(data, epochs, batch_size, seed, objective, device))
    ratios = [t / p for t, p in zip(trainer, loop)]
    loop_ratios = [t / o for t, o in zip(trainer, own)]
    return {
        "trainer_ms": 1e3 * statistics.median(trainer), "pure_loop_ms": 1e3 * statistics.median(loop),
        "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
        "own_loss_loop_ms": 1e3 * statistics.median(own), "loop_ratio": statistics.median(loop_ratios),
        "loop_ratio_range": [min(loop_ratios), max(loop_ratios)],
    }


def training_step_speed(data: torch.Tensor, batch_size: int, repeats: int, block: int, seed: int,
                        device: torch.device | str = "cpu") -> dict[str, Any]:
    torch.manual_seed(seed)
    model, guide = build_model(model_config("vae", data.shape[1], "bernoulli"))
    model, guide = model.to(device), guide.to(device)
    batches = [data[i * batch_size : (i + 1) * batch_size].to(device) for i in range(block)]
    steps = {
        "pure": pure_step_fn(encoder_network(guide), model.decoder, 1e-3, 1e-4),
        "core": our_step_fn(model, guide, "elbo", 1e-3, 1e-4),
        "captured": our_step_fn(model, guide, "captured-elbo", 1e-3, 1e-4),
        "svi": svi_step_fn(model, guide, 1e-3, 1e-4),
    }
    times = time_blocks(steps, batches, repeats, device)
    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = [c / p for c, p in zip(times["core"], times["pure"])]
    captured = [c / p for c, p in zip(times["captured"], times["pure"])]
    return {
        "pure_ms": 1e3 * median["pure"], "core_ms": 1e3 * median["core"], "svi_ms": 1e3 * median["svi"],
        "captured_ms": 1e3 * median["captured"],
        "core_over_pure": statistics.median(ratios),
        "core_over_pure_range": [min(ratios), max(ratios)],
        "captured_over_pure": statistics.median(captured),
        "captured_over_pure_range": [min(captured), max(captured)],
        "svi_over_pure": statistics.median([s / p for s, p in zip(times["svi"], times["pure"])]),
    }


# ---- (b) local q* -----------------------------------------------------------------------


def briefly_trained(train: torch.Tensor, seed: int, device: torch.device | str = "cpu"):
    """An MNIST-sized VAE trained for one epoch: the model the local q*, AIS and evaluation timings run on."""
    torch.manual_seed(seed)
    model, guide = build_model(model_config("vae", train.shape[1], "bernoulli"))
    fit(model, guide, train, TrainOptions(epochs=1, batch_size=100), device=torch.device(device).type)
    return model.to(device).eval(), guide.to(device).eval()


def pure_local_step_seconds(decoder: nn.Module, latent_dim: int, points: torch.Tensor, num_samples: int,
                            steps: int = 20, lr: float = 1e-3) -> float:
    """Seconds per step of a hand-written PyTorch local-FFG step on all ``points`` at once.

    The arithmetic our vectorized step must do, without Pyro, masking or stopping
    rule: the mean of :func:`hand_written_log_weights` over ``num_samples`` draws per point,
    its gradient with respect to the per-point means and log-scales (decoder frozen), Adam.
    """
    loc = torch.zeros(len(points), latent_dim, device=points.device, requires_grad=True)
    log_scale = torch.zeros(len(points), latent_dim, device=points.device, requires_grad=True)
    opt = torch.optim.Adam([loc, log_scale], lr=lr)
    now = clock(points.device)

    def step() -> None:
        elbo = hand_written_log_weights(decoder, loc, log_scale, points, num_samples).mean(0)
        opt.zero_grad()
        (-elbo.sum()).backward()
        opt.step()

    with frozen(decoder):
        for _ in range(3):
            step()
        t0 = now()
        for _ in range(steps):
            step()
        return (now() - t0) / steps


def local_speed(model, guide, points: torch.Tensor, rule: StoppingRule, num_samples: int = 50) -> dict[str, Any]:
    """Vectorized local q* against a per-datapoint loop, and the ceiling a hand-written vectorized step puts on the ratio.

    The loop cannot be beaten by more than (loop seconds per point-step) / (hand-written
    vectorized seconds per point-step): that ratio is reported as ``ceiling``. All three
    draw ``num_samples`` samples per point and step (the reference protocol's 50).
    """
    now = clock(points.device)
    t0 = now()
    vec = optimize_local(model, guide, points, num_samples=num_samples, rule=rule)
    vectorized = now() - t0
    t0 = now()
    loop_steps = []
    for i in range(len(points)):
        one = optimize_local(model, guide, points[i : i + 1], num_samples=num_samples, rule=rule)
        loop_steps.append(int(one.num_steps[0]))
    loop = now() - t0
    pure = pure_local_step_seconds(model.decoder, model.latent_dim, points, num_samples) / len(points)
    ours = vectorized / float(vec.num_steps.sum())
    per_loop_step = loop / sum(loop_steps)
    return {
        "points": len(points), "rule": dataclasses.asdict(rule),
        "vectorized_s": vectorized, "loop_s": loop, "speedup": loop / vectorized,
        "vectorized_mean_steps": float(vec.num_steps.double().mean()), "loop_mean_steps": sum(loop_steps) / len(loop_steps),
        "vectorized_converged": float(vec.converged.double().mean()),
        "ms_per_point_step": {"vectorized": 1e3 * ours, "loop": 1e3 * per_loop_step, "hand_written_vectorized": 1e3 * pure},
        "ceiling": per_loop_step / pure,
    }


# ---- (c) AIS -----------------------------------------------------------------------------


def ais_speed(model, guide, points: torch.Tensor, chains: int, steps: int, leapfrog: int) -> dict[str, Any]:
    hmc = HMCOptions(leapfrog_steps=leapfrog)
    # every transition evaluates the gradient once per leapfrog step, plus once at each new temperature, for the weighted
    # chains and for the pilot run's chains that adapt the step sizes (hmc.pilot_chains per datapoint)
    pilot = hmc.pilot_chains if hmc.adapt_rate > 0 else 0
    evaluations = len(points) * (chains + pilot) * steps * (leapfrog + 1)
    now = clock(points.device)
    t0 = now()
    ais(model, guide, points, num_chains=chains, num_steps=steps, hmc=hmc)
    vectorized = now() - t0
    t0 = now()
    for i in range(len(points)):
        ais(model, guide, points[i : i + 1], num_chains=chains, num_steps=steps, hmc=hmc)
    loop = now() - t0
    return {
        "points": len(points), "chains": chains, "pilot_chains": pilot, "steps": steps, "leapfrog": leapfrog,
        "gradient_evaluations": evaluations,
        "vectorized_s": vectorized, "loop_s": loop, "vectorized_evals_per_s": evaluations / vectorized,
        "loop_evals_per_s": evaluations / loop, "speedup": loop / vectorized,
    }


# ---- (d) evaluation ----------------------------------------------------------------------


def hand_written_iwae(encoder: nn.Module, decoder: nn.Module, points: torch.Tensor, num_samples: int, chunk: int) -> torch.Tensor:
    r"""The IWAE bound :math:`\log \frac1K \sum_k w_k` per point of an FFG-encoder Bernoulli VAE, in plain PyTorch:
    ``chunk`` samples at a time, the log weights of each chunk reduced by one ``logsumexp`` into a running total."""
    with torch.no_grad():
        loc, log_scale = encoder(points).chunk(2, dim=-1)
        total = torch.full((len(points),), -math.inf, dtype=torch.float64, device=points.device)
        for done in range(0, num_samples, chunk):
            log_w = hand_written_log_weights(decoder, loc, log_scale, points, min(chunk, num_samples - done)).double()
            total = torch.logaddexp(total, torch.logsumexp(log_w, dim=0))
        return total - math.log(num_samples)


def evaluation_speed(model, guide, points: torch.Tensor, num_samples: int, max_elements: int | None = None) -> dict[str, Any]:
    """``iwae_log_px`` (K samples, chunked by our memory budget, no PSIS) against :func:`hand_written_iwae` with the same chunk."""
    max_elements = MAX_ELEMENTS if max_elements is None else max_elements
    now = clock(points.device)
    iwae_log_px(model, guide, points[:2], min(num_samples, 10), max_elements=max_elements)  # warm-up
    t0 = now()
    ours = iwae_log_px(model, guide, points, num_samples, max_elements=max_elements)
    ours_s = now() - t0
    chunk = chunk_size_for(inspect_program(model, guide, points), points, model, guide, max_elements)  # the chunk ours uses
    t0 = now()
    hand = hand_written_iwae(encoder_network(guide), model.decoder, points, num_samples, chunk)
    hand_s = now() - t0
    return {
        "points": len(points), "num_samples": num_samples, "ours_s": ours_s, "hand_written_s": hand_s, "ratio": ours_s / hand_s,
        "mean_log_px": {"ours": float(ours.value.mean()), "hand_written": float(hand.mean())},
    }


# ---- main --------------------------------------------------------------------------

#: ``--quick`` on a GPU: every timing at a size where its ratio means something, minutes in all (each overrides its option).
QUICK_CUDA = {
    "block": 50, "repeats": 10, "trainer_points": 10_000, "trainer_epochs": 3, "trainer_repeats": 2, "local_points": 50,
    "local_window": 50, "local_patience": 4, "local_max_steps": 500, "ais_points": 20, "ais_chains": 100, "ais_steps": 20,
    "ais_leapfrog": 10, "eval_points": 200, "eval_samples": 5000, "briefly_trained_points": 10_000,
}
#: ``--quick`` on a CPU: tiny sizes, seconds in all (the test suite runs it so that it never rots; its ratios mean little).
QUICK_CPU = {
    "block": 4, "repeats": 2, "trainer_points": 400, "trainer_epochs": 2, "trainer_repeats": 1, "local_points": 4,
    "local_window": 3, "local_patience": 1, "local_max_steps": 9, "ais_points": 2, "ais_chains": 4, "ais_steps": 3,
    "ais_leapfrog": 2, "eval_points": 5, "eval_samples": 50, "briefly_trained_points": 400,
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=DEFAULT_DATA_ROOT)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--block", type=int, default=50, help="steps per timed block (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=20, help="interleaved blocks per method (default: %(default)s)")
    p.add_argument("--trainer-points", type=int, default=10_000, help="training points for the timing of fit's loop (default: %(default)s)")
    p.add_argument("--trainer-epochs", type=int, default=3, help="epochs for the timing of fit's loop, the first not timed (default: %(default)s)")
    p.add_argument("--trainer-repeats", type=int, default=3, help="back-to-back runs of fit and the hand-written loops (default: %(default)s)")
    p.add_argument("--local-points", type=int, default=200)
    p.add_argument("--local-window", type=int, default=50)
    p.add_argument("--local-patience", type=int, default=4)
    p.add_argument("--local-max-steps", type=int, default=1000)
    p.add_argument("--ais-points", type=int, default=20, help="MNIST test points for the AIS timing (default: %(default)s)")
    p.add_argument("--ais-chains", type=int, default=100)
    p.add_argument("--ais-steps", type=int, default=20, help="intermediate distributions for the AIS timing (default: %(default)s)")
    p.add_argument("--ais-leapfrog", type=int, default=10)
    p.add_argument("--eval-points", type=int, default=200, help="MNIST test points for the evaluation timing (default: %(default)s)")
    p.add_argument("--eval-samples", type=int, default=5000, help="K of the evaluation timing (default: %(default)s)")
    p.add_argument("--briefly-trained-points", type=int, default=10_000, help="training points of the model the local, AIS and evaluation timings use")
    p.add_argument("--skip", choices=("training", "local", "ais", "evaluation"), action="append", default=[])
    p.add_argument("--device", choices=DEVICES, default="cpu", help="cpu or cuda: where every timing runs (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small sizes: minutes on a GPU, seconds (tiny sizes) on a CPU; overrides the size options")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("results", "speed"))
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --out")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_seed(args.seed, "--seed")
    if args.quick:
        for key, value in (QUICK_CUDA if args.device == "cuda" else QUICK_CPU).items():
            setattr(args, key, value)
    with OutputFolder(args.out, results=("speed.json", "speed.md"), overwrite=args.overwrite) as folder:
        return measure(args, folder)


def measure(args: argparse.Namespace, folder: OutputFolder) -> dict[str, Any]:
    device = resolve_device(args.device)
    data = load_dataset("mnist", "bernoulli", "static", data_root=args.data_root)
    result: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k not in ("skip", "overwrite")},
        "data": "statically binarized MNIST", "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    if "training" not in args.skip:
        result["training_step"] = training_step_speed(data.train, args.batch_size, args.repeats, args.block, args.seed, device)
        result["trainer"] = {
            objective: trainer_step_ratio(data.train[: args.trainer_points], args.trainer_epochs, args.batch_size, args.seed,
                                          objective, args.trainer_repeats, device)
            for objective in ("elbo", "captured-elbo")
        }
        print(speed_markdown(result), flush=True)
    if {"local", "ais", "evaluation"} - set(args.skip):
        model, guide = briefly_trained(data.train[: args.briefly_trained_points], args.seed, device)
    test = data.test.to(device)
    if "local" not in args.skip:
        rule = StoppingRule(args.local_window, args.local_patience, args.local_max_steps)
        result["local"] = local_speed(model, guide, test[: args.local_points], rule)
    if "ais" not in args.skip:
        result["ais"] = ais_speed(model, guide, test[: args.ais_points], args.ais_chains, args.ais_steps, args.ais_leapfrog)
    if "evaluation" not in args.skip:
        result["evaluation"] = evaluation_speed(model, guide, test[: args.eval_points], args.eval_samples)
    table = speed_markdown(result)
    folder.write(table, {"speed.json": result, "speed.md": table})
    return result


def cli(argv: list[str] | None = None) -> int:
    return run_cli(make_parser().parse_args, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
