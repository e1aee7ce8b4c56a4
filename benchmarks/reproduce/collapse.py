"""Experiment 8, beyond the paper: posterior collapse under a strong decoder, and its standard remedies.

The VAE with the autoregressive Bernoulli decoder (``decoder="autoregressive"``: each pixel also sees
the pixels before it, so the decoder can model the data without z, and the plain ELBO lets the
encoder collapse onto the prior). Trained with

* the plain ELBO (the baseline);
* **KL annealing** (Bowman et al. 2016): the ELBO with a linear warm-up of the KL weight;
* **free bits** (Kingma et al. 2016): objective ``free-bits``, each latent site's batch-mean KL floored at λ; the
  VAE has one site, ``z`` (50 dimensions), so λ is a floor on the whole KL, in nats, and the budgets' grids are
  sized for that (a few nats); and objective ``free-bits-dim``, the floor on each latent unit's KL (λ in nats per unit,
  the budgets' grids the same totals spread over the units);
* **β-VAE** (Higgins et al. 2017): objective ``beta-vae``, a fixed weight β on the KL.

Each model on the same held-out points: active units (posterior-mean variance > 0.01, Burda et al.
2016), L[q], log p(x) (IWAE) and both gaps (q*: the best per-datapoint FFG). Claims, paired against
the baseline: whether each remedy's inference gap log p(x) − L[q] is larger (the price of its active
units), and whether its log p(x) is higher.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from benchmarks.report import save_figure
from inference.claims import judge
from inference.diagnostics import active_units

from .models import per_point
from .report import Report, stat

NAME = "collapse"
TITLE = "Posterior collapse under a strong decoder, and its remedies"
FIGURES = ("collapse.png",)


def settings(budget) -> list[tuple[str, str, dict]]:
    """(label, model name, training options) of every model: the baseline first, then each remedy's grid."""
    out = [("ELBO", "collapse-elbo", {"objective": "elbo", "kl_warmup_epochs": 0.0})]
    out += [(f"KL annealing over {w:g} epochs", f"collapse-elbo-warmup{w:g}", {"objective": "elbo", "kl_warmup_epochs": w})
            for w in budget.collapse_warmup if w > 0]
    out += [(f"free bits λ = {lam:g}", f"collapse-free-bits{lam:g}", {"objective": "free-bits", "free_bits": lam, "kl_warmup_epochs": 0.0})
            for lam in budget.free_bits if lam > 0]
    out += [(f"free bits per unit λ = {lam:g}", f"collapse-free-bits-dim{lam:g}",
             {"objective": "free-bits-dim", "free_bits": lam, "kl_warmup_epochs": 0.0})
            for lam in budget.free_bits_dim if lam > 0]
    out += [(f"β-VAE β = {beta:g}" + (" (a contrast: β > 1 pushes toward collapse)" if beta > 1 else ""), f"collapse-beta{beta:g}",
             {"objective": "beta-vae", "beta": beta, "kl_warmup_epochs": 0.0})
            for beta in budget.betas if beta != 1]
    return out


def run(runner) -> Report:
    b = runner.budget
    cfg = runner.vae_config(guide="ffg", decoder="autoregressive")
    x = runner.points("test")
    results, rows = {}, []
    for label, name, options in settings(b):
        model, guide, done = runner.train(name, cfg, runner.train_options(epochs=b.collapse_epochs, **options))
        gaps = runner.gaps(name, model, guide, "test", families=(), log_px="iwae")
        units = runner.evaluation(f"active-{name}-{runner._weights_digest(model, guide)}", {"what": "active units", "n": len(x),
                                  "weights": runner._weights_digest(model, guide)},
                                  lambda model=model, guide=guide: _units(active_units(model, guide, x)))
        results[label] = {"model": name, "options": options, "active_units": {"active": units["active"], "total": units["total"]}, "gaps": gaps}
        q = gaps["quantities"]
        rows.append([label, f"{units['active']}/{units['total']}", stat(q["log_px"]), stat(q["elbo_amortized"]), stat(q["approximation_gap"]),
                     stat(q["amortization_gap"]), stat(q["inference_gap"])])
    report = Report(NAME, TITLE, results)
    baseline = results["ELBO"]["gaps"]
    for label, r in list(results.items())[1:]:
        report.claim("the remedy buys its active units at the price of a larger inference gap", judge(
            f"{label}: inference gap > the ELBO's", per_point(r["gaps"], "inference_gap"), per_point(baseline, "inference_gap")).to_dict(),
            f"{r['active_units']['active']} active units against {results['ELBO']['active_units']['active']}")
        report.claim("... and a better generative model", judge(
            f"{label}: log p(x) > the ELBO's", per_point(r["gaps"], "log_px"), per_point(baseline, "log_px")).to_dict())
    report.table(["training", "active units", "log p(x)", "L[q]", "approximation gap", "amortization gap", "inference gap"], rows)
    report.text(f"Autoregressive Bernoulli decoder, latent {b.latent_dim}; every model trained {b.collapse_epochs} epochs; {len(x)} held-out "
                f"points; log p(x): IWAE bound, K = {b.log_px_samples}; active units over the same points.")
    report.figure(FIGURES[0], lambda path: _figure(results, path), "active units, bounds and gaps against λ and β")
    return report


def _units(units) -> dict:
    return {"active": units.active, "total": units.total}


def _figure(results, path: str) -> None:
    groups = {"free bits λ (site total, nats)": [(0.0, results["ELBO"])], "β-VAE β": [(1.0, results["ELBO"])]}
    for r in results.values():
        o = r["options"]
        if o["objective"] == "free-bits":
            groups["free bits λ (site total, nats)"].append((o["free_bits"], r))
        elif o["objective"] == "free-bits-dim":  # on the same axis: the floor's total over the units
            groups["free bits λ (site total, nats)"].append((o["free_bits"] * r["active_units"]["total"], r))
        elif o["objective"] == "beta-vae":
            groups["β-VAE β"].append((o["beta"], r))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for row, (xlabel, entries) in enumerate(groups.items()):
        entries = sorted(entries, key=lambda e: e[0])
        xs = [e[0] for e in entries]
        axes[row, 0].plot(xs, [e[1]["active_units"]["active"] for e in entries], "o-")
        axes[row, 0].set_ylabel("active units")
        for quantity, label in (("log_px", "log p(x)"), ("elbo_amortized", "L[q]")):
            stats = [e[1]["gaps"]["quantities"][quantity] for e in entries]
            axes[row, 1].errorbar(xs, [s["mean"] for s in stats], yerr=[s["se"] for s in stats], fmt="o-", capsize=3, label=label)
        for quantity in ("approximation_gap", "amortization_gap"):
            stats = [e[1]["gaps"]["quantities"][quantity] for e in entries]
            axes[row, 2].errorbar(xs, [s["mean"] for s in stats], yerr=[s["se"] for s in stats], fmt="o-", capsize=3, label=quantity.replace("_", " "))
        for ax in axes[row]:
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        axes[row, 1].legend(fontsize=8)
        axes[row, 2].legend(fontsize=8)
    axes[0, 1].set_title("bounds (nats)")
    axes[0, 2].set_title("gaps (nats)")
    save_figure(fig, path)
