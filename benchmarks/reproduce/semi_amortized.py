"""Experiment 7, beyond the paper: closing the amortization gap by refinement (Kim, Wiseman, Miller, Sontag & Rush 2018).

Two ways of spending k SGD steps per datapoint on its ELBO, from the encoder's output (clipped,
step size ``svi_lr``, ``svi_samples`` samples per step: :meth:`inference.objectives.SemiAmortizedELBO.refine`;
with one sample per step the noise undoes the climb on digits, measured):

* **test-time refinement** of the plain VAE (experiment 1's FFG model): the steps at evaluation only;
* **SA-VAE**: models trained with objective ``sa-vae`` (``svi_steps`` = k), the encoder trained
  through the steps, evaluated with the same k steps.

For each model and k: L[q_k] after the steps, the share of the amortization gap closed,
r_k = mean(L[q_k] − L[q]) / mean(L[q*] − L[q]) with its delta-method SE
(:func:`inference.refinement.share_closed`; q* the model's own best per-datapoint FFG), and the cost:
seconds per refinement step for the evaluated points, and each model's training seconds per step.
Claims (paired, held-out points): k steps raise the ELBO (L[q_k] > L[q]); an SA-VAE's generative model
is better than the VAE's (log p(x), on the same points).
"""

from __future__ import annotations

import time

import torch

from inference.claims import judge
from inference.estimators import elbo
from inference.objectives import SemiAmortizedELBO
from inference.refinement import share_closed

from .gaps_by_family import main_models
from .models import iwae_log_px, per_point
from .report import Report, stat

NAME = "semi-amortized"
TITLE = "Closing the amortization gap: test-time refinement and SA-VAE (Kim et al. 2018)"
FIGURES = ()


def refined_elbos(runner, name: str, model, guide, x: torch.Tensor, steps: tuple[int, ...]) -> dict:
    """Per-point L[q_k] after k refinement steps for each k, and the seconds per step (cached)."""
    b = runner.budget
    config = {"what": "refinement", "model": name, "n": len(x), "steps": list(steps), "svi_lr": b.svi_lr, "svi_samples": b.svi_samples,
              "elbo_samples": b.elbo_samples,
              "weights": runner._weights_digest(model, guide)}

    def compute() -> dict:
        out = {}
        for k in steps:
            refiner = SemiAmortizedELBO(model, guide, b.svi_samples, svi_steps=k, svi_lr=b.svi_lr)
            with torch.no_grad():
                start = guide.variational_params(x)
            t0 = time.perf_counter()
            params = refiner.refine(x, start)
            seconds = (time.perf_counter() - t0) / max(k, 1)
            value = elbo(model, lambda x_, p=params: guide(x_, params=p), x, b.elbo_samples, max_elements=b.max_elements).value
            out[str(k)] = {"per_point": value.tolist(), "seconds_per_step": seconds}
        return out

    return runner.evaluation(f"refinement-{name}-{runner._weights_digest(model, guide)}", config, compute)


def run(runner) -> Report:
    b = runner.budget
    x = runner.points("test")
    vae = main_models(runner, ("ffg",))["ffg"]
    models = {"VAE (refinement at test time only)": (vae["name"], vae["model"], vae["guide"], vae["done"], vae["splits"]["test"], None)}
    for k in b.sa_steps:
        name = f"sa-vae-k{k}"
        cfg = runner.vae_config(guide="ffg")
        model, guide, done = runner.train(name, cfg, runner.train_options(objective="sa-vae", num_particles=b.svi_samples,
                                                                       svi_steps=k, svi_lr=b.svi_lr, epochs=b.sa_epochs))
        models[f"SA-VAE trained with k = {k}"] = (name, model, guide, done, runner.gaps(name, model, guide, "test", families=(), log_px="iwae"), k)
    results, rows = {}, []
    report = Report(NAME, TITLE, results)
    base_log_px = iwae_log_px(vae["splits"]["test"])  # the same estimator (IWAE) as the SA-VAEs' log p(x)
    for label, (name, model, guide, done, gaps, trained_k) in models.items():
        steps = tuple(b.refine_steps) if trained_k is None else tuple(sorted({trained_k, *b.refine_steps}))
        refined = refined_elbos(runner, name, model, guide, x, steps)
        amortized, best = per_point(gaps, "elbo_amortized"), per_point(gaps, "elbo_local")
        epochs = done["record"]["train"]["epochs"]
        steps_trained = epochs * -(-len(runner.data().train) // b.batch_size)
        entry = {"model": name, "gaps": gaps, "train_seconds_per_step": done["train_seconds"] / max(steps_trained, 1), "refinement": {}}
        for k in steps:
            value = torch.tensor(refined[str(k)]["per_point"])
            try:
                share = share_closed(value, amortized, best)
            except ValueError:  # q* closes no gap on these points (too short a local fit): no share to report
                share = None
            entry["refinement"][k] = {"elbo": {"mean": float(value.mean()), "se": float(value.std() / len(value) ** 0.5)},
                                      "share_closed": None if share is None else share._asdict(),
                                      "seconds_per_step": refined[str(k)]["seconds_per_step"]}
            rows.append([label, k, stat(gaps["quantities"]["elbo_amortized"]), stat(entry["refinement"][k]["elbo"]),
                         stat(gaps["quantities"]["elbo_local"]), "— (q* closes no gap)" if share is None else f"{share.value:.3f} ± {share.se:.3f}",
                         f"{1000 * refined[str(k)]['seconds_per_step']:.1f}", f"{1000 * entry['train_seconds_per_step']:.1f}"])
            report.claim("k refinement steps raise the ELBO", judge(f"L[q_{k}] > L[q]", value, amortized).to_dict(), label)
        if trained_k is not None:
            vae_epochs = vae["done"]["record"]["train"]["epochs"]
            report.claim("an SA-VAE's generative model is better than the VAE's (Kim et al. 2018)", judge(
                f"SA-VAE (k = {trained_k}, {epochs} epochs) log p(x) > VAE ({vae_epochs} epochs) log p(x), both IWAE",
                iwae_log_px(gaps), base_log_px).to_dict(), "held-out points" + ("" if epochs == vae_epochs else ", unequal training budgets"))
        results[label] = entry
    report.table(["model", "refinement steps k", "L[q]", "L[q_k]", "L[q*]", "share of the amortization gap closed",
                  f"ms per refinement step ({len(x)} points)", "training ms per step"], rows)
    report.text(f"{len(x)} held-out points; refinement: k SGD steps of size {b.svi_lr} on each datapoint's {b.svi_samples}-sample ELBO, gradients "
                "clipped to norm 5 per datapoint, from the encoder's output; L[q*]: each model's own best per-datapoint FFG. "
                f"The VAE trained {vae['done']['record']['train']['epochs']} epochs, the SA-VAEs {b.sa_epochs}.")
    return report
