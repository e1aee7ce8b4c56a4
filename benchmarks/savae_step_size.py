"""The step-size check of experiment 7's refinement: does the share of the amortization gap closed rise with k?

``python -m benchmarks.savae_step_size [--epochs 100] [--points 50] [--sa-steps K]`` trains the experiments' digits VAE (latent 50,
200-200 tanh, batch 100, Adam 1e-3, ELBO) for a few epochs, fits each held-out point's best FFG q* (the CPU budget's
rule), and refines the encoder's output with k = 1, 5, 20 steps of several inner optimizers, printing
L[q_k] and r_k = mean(L[q_k] - L[q]) / mean(L[q*] - L[q]) for each. It also prints the largest eigenvalue of each
datapoint's Hessian of -ELBO in the mean and in the log-scale (power iteration, fixed noise, 200 samples): heavy-ball
SGD is stable on a quadratic only while lr * lambda_max < 2 (1 + momentum), which decides what a step size can do.
With ``--sa-steps K`` it also trains an SA-VAE (K steps, experiment 7's options) for the same epochs and prints its shares
with the experiment's optimizer. A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from benchmarks.datasets import load_dataset
from inference.estimators import elbo
from inference.io import atomic_write_json, atomic_write_text
from inference.local import LocalOptions, StoppingRule, local_posterior
from inference.objectives import SemiAmortizedELBO
from inference.refinement import share_closed
from inference.sampling import set_seed
from inference.training import TrainOptions, fit
from ppl_models import build_model, model_config

FINAL = "Kim et al.'s, as the experiment now runs: mean ELBO (/100, the training batch), closed-form KL"
#: label -> (samples per step, SemiAmortizedELBO options, divisor of the mean): the experiment's old and new optimizers and the
#: two halves of the change between them
CONFIGS = {
    "before (lr 0.05, 10 samples, no momentum, per-datapoint clip, summed ELBO, sampled KL)":
        (10, dict(svi_lr=0.05, svi_momentum=0.0, clip="datapoint", reduction="sum", analytic_kl=False), None),
    "Kim et al.'s lr 1 / momentum 0.5 / batch clip 5, 1 sample, on the summed ELBO, sampled KL":
        (1, dict(svi_lr=1.0, svi_momentum=0.5, clip="batch", reduction="sum", analytic_kl=False), None),
    "Kim et al.'s lr 1 / momentum 0.5 / batch clip 5, 1 sample, on the summed ELBO, closed-form KL":
        (1, dict(svi_lr=1.0, svi_momentum=0.5, clip="batch", reduction="sum", analytic_kl=True), None),
    "Kim et al.'s lr 1 / momentum 0.5 / batch clip 5, 1 sample, on the mean ELBO (/100), sampled KL":
        (1, dict(svi_lr=1.0, svi_momentum=0.5, clip="batch", reduction="mean", analytic_kl=False), 100),
    FINAL:
        (1, dict(svi_lr=1.0, svi_momentum=0.5, clip="batch", reduction="mean", analytic_kl=True), 100),
}


def largest_eigenvalues(model, guide, x, start, key, iterations=30):
    """Per datapoint, the largest eigenvalue of the Hessian of -ELBO in ``start[key]`` (power iteration on fixed noise)."""
    probe = SemiAmortizedELBO(model, guide, 200)
    v = torch.randn_like(start[key])
    for _ in range(iterations):
        p = {k: t.detach().clone().requires_grad_(True) for k, t in start.items()}
        torch.manual_seed(1)
        g = torch.autograd.grad(-probe.bound(x, p).sum(), p[key], create_graph=True)[0]
        hv = torch.autograd.grad((g * v).sum(), p[key])[0]
        lam = (hv * v).sum(1) / (v * v).sum(1)
        v = hv / hv.norm(dim=1, keepdim=True)
    return lam


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.savae_step_size", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--sa-steps", type=int, default=0, help="also train an SA-VAE with this many steps (0: none)")
    parser.add_argument("--out", default=None, help="also write what it prints into OUT/savae-step-size.json and .md")
    args = parser.parse_args(argv)
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    t0 = time.perf_counter()
    data = load_dataset("digits", "bernoulli", "dynamic")
    x = data.eval_points("test", args.points)
    trainings = {"VAE": TrainOptions(epochs=args.epochs, batch_size=100, lr=1e-3, kl_warmup_epochs=min(10.0, args.epochs / 3), seed=0)}
    if args.sa_steps:
        trainings[f"SA-VAE (K = {args.sa_steps})"] = dataclasses.replace(
            trainings["VAE"], objective="sa-vae", svi_steps=args.sa_steps, svi_lr=1.0, svi_momentum=0.5, svi_clip="batch", svi_max_grad_norm=5.0,
            svi_reduction="mean", svi_analytic_kl=True, decoder_through_refinement=True, max_grad_norm=5.0)
    for name, options in trainings.items():
        set_seed(0)
        model, guide = build_model(model_config("vae", 64, "bernoulli", latent_dim=50, hidden=[200, 200], encoder_hidden=[200, 200],
                                                activation="tanh"))
        t1 = time.perf_counter()
        fit(model, guide, data, options)
        seconds = time.perf_counter() - t1
        model.eval(), guide.eval()
        with torch.no_grad():
            start = guide.variational_params(x)
        amortized = elbo(model, guide, x, 1000).value
        q_star = LocalOptions(num_samples=20, rule=StoppingRule(window=50, patience=5, max_steps=3000))
        best = local_posterior(model, guide, x, q_star, eval_samples=1000).elbo.value
        say(f"{name} trained {args.epochs} epochs in {seconds:.0f} s; {args.points} held-out points: L[q] {amortized.mean():.3f}, "
            f"L[q*] {best.mean():.3f}")
        for key in ("loc", "log_scale"):
            lam = largest_eigenvalues(model, guide, x, start, key)
            say(f"  largest Hessian eigenvalue of -ELBO in {key}, per datapoint: median {lam.median():.1f}, max {lam.max():.1f}")
        for label, (samples, refine_options, divisor) in CONFIGS.items():
            if name != "VAE" and label != FINAL:
                continue
            out = []
            for k in (1, 5, 20):
                torch.manual_seed(2)
                params = SemiAmortizedELBO(model, guide, samples, svi_steps=k, **refine_options).refine(x, start, divisor=divisor)
                value = elbo(model, lambda x_, p=params, g=guide: g(x_, params=p), x, 1000).value
                share = share_closed(value, amortized, best)
                out.append(f"k={k}: L[q_k] {value.mean():.3f}, r_k {share.value:.3f} ± {share.se:.3f}")
            say(f"  {label}\n      " + "; ".join(out))
    say(f"{time.perf_counter() - t0:.0f} s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        atomic_write_json(os.path.join(args.out, "savae-step-size.json"), {"arguments": vars(args), "lines": lines})
        atomic_write_text(os.path.join(args.out, "savae-step-size.md"), "```\n" + "\n".join(lines) + "\n```\n")


def cli(argv: list[str] | None = None) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
