"""Experiment 7, beyond the paper: closing the amortization gap by refinement (Kim, Wiseman, Miller, Sontag & Rush 2018).

Two ways of spending k SGD steps per datapoint on its ELBO, from the encoder's output, both with the inner optimizer of
Kim et al.'s code (:meth:`inference.objectives.SemiAmortizedELBO.refine`): step size ``svi_lr`` (1) with momentum
``svi_momentum`` (0.5) on the batch's *mean* ELBO (so each datapoint moves by 1/B of its own gradient, B the training
batch size, at test time too), closed-form KL terms, ``svi_samples`` (1) sample per step, the means' and the log-scales'
gradients each clipped as a whole over the batch to norm ``svi_max_grad_norm`` (5):

* **test-time refinement** of the plain VAE (experiment 1's FFG model): the steps at evaluation only;
* **SA-VAE**: models trained with objective ``sa-vae`` (``svi_steps`` = k; the reference's K = 20 at the full budget, fewer
  on a CPU's), the encoder *and* the decoder trained through the unrolled steps (exact second-order terms by autograd,
  where the reference takes finite differences), the whole gradient clipped to ``sa_max_grad_norm`` (5) before each Adam step.

Two baselines for each SA-VAE: the VAE at **matched samples per step** (experiment 1's model: one sample per step, as the
SA-VAE's every step), and a VAE trained for **matched wall time**: as many epochs as the SA-VAE's training seconds buy at the
VAE's measured seconds per epoch, ``round(SA-VAE seconds / VAE seconds per epoch)``, computed once (on the first run) and kept,
with the timings, in ``evals/`` (so later runs train and reuse the same model).

For each model and every k of ``refine_steps`` (and the SA-VAE's own k): L[q_k] after the steps, the share of the
amortization gap closed, r_k = mean(L[q_k] − L[q]) / mean(L[q*] − L[q]) with its delta-method SE
(:func:`inference.refinement.share_closed`; q* the model's own best per-datapoint FFG), and the cost: seconds per refinement
step for the evaluated points, and each model's training seconds per step.
Claims (paired, held-out points): k steps raise the ELBO (L[q_k] > L[q]); an SA-VAE's generative model is better than the
VAE's (log p(x), on the same points), at matched samples per step and at matched wall time.
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


def inner_optimizer(budget) -> dict:
    """The refinement's optimizer (Kim et al.'s code's), in training and at test time alike: SemiAmortizedELBO's options."""
    return {"svi_lr": budget.svi_lr, "svi_momentum": budget.svi_momentum, "max_grad_norm": budget.svi_max_grad_norm, "clip": "batch",
            "reduction": "mean", "analytic_kl": True}


def refined_elbos(runner, name: str, model, guide, x: torch.Tensor, steps: tuple[int, ...]) -> dict:
    """Per-point L[q_k] after k refinement steps for each k, and the seconds per step (cached).

    The points are refined in chunks of the training batch size, each chunk's mean ELBO divided by the training batch size:
    every datapoint takes the steps it took in training (a chunk of fewer points is clipped a little less)."""
    b = runner.budget
    optimizer = inner_optimizer(b)
    config = {"what": "refinement", "model": name, "n": len(x), "steps": list(steps), **optimizer, "svi_samples": b.svi_samples,
              "divisor": b.batch_size, "elbo_samples": b.elbo_samples, "weights": runner._weights_digest(model, guide)}

    def compute() -> dict:
        out = {}
        for k in steps:
            refiner = SemiAmortizedELBO(model, guide, b.svi_samples, svi_steps=k, **optimizer)
            with torch.no_grad():
                start = guide.variational_params(x)
            t0 = time.perf_counter()
            chunks = [refiner.refine(x[i : i + b.batch_size], {key: v[i : i + b.batch_size] for key, v in start.items()}, divisor=b.batch_size)
                      for i in range(0, len(x), b.batch_size)]
            params = {key: torch.cat([c[key] for c in chunks]) for key in start}
            seconds = (time.perf_counter() - t0) / max(k, 1)
            value = elbo(model, lambda x_, p=params: guide(x_, params=p), x, b.elbo_samples, max_elements=b.max_elements).value
            out[str(k)] = {"per_point": value.tolist(), "seconds_per_step": seconds}
        return out

    return runner.evaluation(f"refinement-{name}-{runner._weights_digest(model, guide)}", config, compute)


def matched_time_epochs(runner, vae: dict, sa_name: str, sa_done: dict) -> dict:
    """The epochs of a VAE trained for the SA-VAE's wall time: ``round(SA-VAE training seconds / VAE seconds per epoch)``,
    from the two trainings' recorded seconds; computed on the first run and kept (with the timings) in ``evals/``."""
    config = {"what": "matched wall time", "sa-vae": sa_name, "sa-vae record": sa_done["record"], "vae": vae["name"],
              "vae record": vae["done"]["record"]}

    def compute() -> dict:
        vae_epochs = vae["done"]["record"]["train"]["epochs"]
        per_epoch = vae["done"]["train_seconds"] / max(vae_epochs, 1)
        seconds = sa_done["train_seconds"]
        return {"sa_vae_seconds": seconds, "vae_seconds_per_epoch": per_epoch, "epochs": max(1, round(seconds / per_epoch))}

    return runner.evaluation(f"matched-time-{sa_name}", config, compute)


def run(runner) -> Report:
    b = runner.budget
    x = runner.points("test")
    vae = main_models(runner, ("ffg",))["ffg"]
    label_vae = "VAE (matched samples per step; refinement at test time only)"
    models = {label_vae: (vae["name"], vae["model"], vae["guide"], vae["done"], vae["splits"]["test"], None)}
    baselines = {}  # SA-VAE label -> [(what, label of the VAE)]
    matched = {}
    for k in b.sa_steps:
        name = f"sa-vae-k{k}"
        cfg = runner.vae_config(guide="ffg")
        options = runner.train_options(objective="sa-vae", num_particles=b.svi_samples, svi_steps=k, svi_lr=b.svi_lr,
                                       svi_momentum=b.svi_momentum, svi_clip="batch", svi_max_grad_norm=b.svi_max_grad_norm, svi_reduction="mean", svi_analytic_kl=True,
                                       decoder_through_refinement=True, max_grad_norm=b.sa_max_grad_norm, epochs=b.sa_epochs)
        model, guide, done = runner.train(name, cfg, options)
        label = f"SA-VAE trained with k = {k}"
        models[label] = (name, model, guide, done, runner.gaps(name, model, guide, "test", families=(), log_px="iwae"), k)
        baselines[label] = [("matched samples per step", label_vae)]
        if b.sa_matched_time:
            epochs = matched_time_epochs(runner, vae, name, done)
            matched[name] = epochs
            vname = f"vae-ffg-time-of-{name}"
            vmodel, vguide, vdone = runner.train(vname, runner.vae_config(guide="ffg"), runner.train_options(epochs=epochs["epochs"]))
            vlabel = f"VAE (matched wall time of SA-VAE k = {k}: {epochs['epochs']} epochs)"
            models[vlabel] = (vname, vmodel, vguide, vdone, runner.gaps(vname, vmodel, vguide, "test", families=(), log_px="iwae"), None)
            baselines[label].append(("matched wall time", vlabel))
    results, rows = {"matched_wall_time": matched}, []
    report = Report(NAME, TITLE, results)
    for label, (name, model, guide, done, gaps, trained_k) in models.items():
        steps = tuple(b.refine_steps) if trained_k is None else tuple(sorted({trained_k, *b.refine_steps}))
        refined = refined_elbos(runner, name, model, guide, x, steps)
        amortized, best = per_point(gaps, "elbo_amortized"), per_point(gaps, "elbo_local")
        epochs = done["record"]["train"]["epochs"]
        steps_trained = epochs * -(-len(runner.data().train) // b.batch_size)
        entry = {"model": name, "gaps": gaps, "epochs": epochs, "train_seconds": done["train_seconds"],
                 "train_seconds_per_step": done["train_seconds"] / max(steps_trained, 1), "refinement": {}}
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
        for what, base in baselines.get(label, []):
            base_name, _, _, base_done, base_gaps, _ = models[base]
            base_epochs = base_done["record"]["train"]["epochs"]
            report.claim(f"an SA-VAE's generative model is better than the VAE's, at {what} (Kim et al. 2018)", judge(
                f"SA-VAE (k = {trained_k}, {epochs} epochs) log p(x) > VAE ({base_epochs} epochs) log p(x), both IWAE",
                iwae_log_px(gaps), iwae_log_px(base_gaps)).to_dict(), "held-out points")
        results[label] = entry
    report.table(["model", "refinement steps k", "L[q]", "L[q_k]", "L[q*]", "share of the amortization gap closed",
                  f"ms per refinement step ({len(x)} points)", "training ms per step"], rows)
    time_note = "".join(
        f" Matched wall time for {n}: its {m['sa_vae_seconds']:.1f} s of training at the VAE's {m['vae_seconds_per_epoch']:.2f} s per epoch "
        f"are {m['epochs']} epochs." for n, m in matched.items())
    report.text(f"{len(x)} held-out points; refinement (test time and SA-VAE training alike, Kim et al.'s optimizer): k SGD steps of size "
                f"{b.svi_lr} with momentum {b.svi_momentum} on the mean over the batch ({b.batch_size} points) of the {b.svi_samples}-sample "
                f"ELBO with closed-form KL, the means' and log-scales' gradients each clipped over the batch to norm {b.svi_max_grad_norm}, "
                "from the encoder's output; L[q*]: each model's own best per-datapoint FFG. SA-VAEs: encoder and decoder trained through "
                f"the k steps, gradient clipped to {b.sa_max_grad_norm}, trained with k = {', '.join(map(str, b.sa_steps))}"
                f"{'' if 20 in b.sa_steps else ' (Kim et al.: 20; fewer on this budget for time)'}, {b.sa_epochs} epochs; "
                f"the matched-samples VAE (one sample per step) trained {vae['done']['record']['train']['epochs']} epochs, "
                f"without gradient clipping.{time_note}")
    return report
