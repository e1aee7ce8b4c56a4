"""Experiment 5: the gaps over training (Cremer, Li & Duvenaud 2018, Section 5.4, Figure 3).

Snapshots of experiment 1's FFG model and of the largest-encoder model of experiment 2 (the paper
follows its "larger encoder" model), every ``snapshot_every`` epochs, and of the largest-encoder model
trained on the first ``overfit_points`` training points for ``overfit_epochs`` (ours: with the whole
training set a CPU budget ends before the encoder overfits); at up to :data:`MAX_SNAPSHOTS`
of them, evenly spaced, log p(x), L[q*] and L[q] on training and held-out points. Claim, a paired
test on the held-out points: the amortization gap grows as the encoder overfits (at the last
snapshot it is larger than at a quarter of the training, an epoch fixed in advance).
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from benchmarks.report import save_figure
from inference.claims import judge, judge_unpaired

from .models import per_point, vae
from .report import Report, stat

NAME = "gaps-over-training"
TITLE = "Gaps over training (Cremer, Li & Duvenaud 2018)"
FIGURES = ("gaps-over-training.png",)
MAX_SNAPSHOTS = 8


def chosen(epochs: list[int], most: int = MAX_SNAPSHOTS) -> list[int]:
    """At most ``most`` of ``epochs``, evenly spaced, always with the first and the last."""
    if len(epochs) <= most:
        return epochs
    step = (len(epochs) - 1) / (most - 1)
    return sorted({epochs[round(i * step)] for i in range(most)})


def run(runner) -> Report:
    b = runner.budget
    points = max(2, b.num_points // 2)
    trained = {}
    for encoder in (None, b.encoder_sizes[-1]):  # the FFG model of experiment 1, the largest-encoder model of experiment 2
        name, _, _, done = vae(runner, "ffg", encoder)
        trained[name] = done
    # the largest encoder on a small training set, trained long: where the encoder overfits within the budget
    name, _, _, done = vae(runner, "ffg", b.encoder_sizes[-1], train_points=b.overfit_points, snapshot_every=max(1, b.overfit_epochs // 10),
                           epochs=b.overfit_epochs)
    trained[name] = done
    results, rows = {}, []
    for name, done in trained.items():
        snapshots = runner.snapshot_pairs(done)
        epochs = chosen([e for e, _, _ in snapshots])
        curve = {}
        for epoch, model, guide in snapshots:
            if epoch in epochs:
                curve[epoch] = {split: runner.gaps(f"{name}@{epoch}", model, guide, split, families=(), log_px="iwae", num_points=points)
                                for split in ("train", "test")}
                for split, s in curve[epoch].items():
                    q = s["quantities"]
                    rows.append([name, epoch, split, stat(q["log_px"]), stat(q["elbo_local"]), stat(q["elbo_amortized"]),
                                 stat(q["approximation_gap"]), stat(q["amortization_gap"])])
        results[name] = curve
    report = Report(NAME, TITLE, {"points": points, "models": {n: {str(e): v for e, v in c.items()} for n, c in results.items()}})
    for name, curve in results.items():
        epochs = sorted(curve)
        last = epochs[-1]
        quarter = min(epochs, key=lambda e: abs(e - last / 4))
        if quarter == last:
            continue
        for split in ("test", "train"):
            report.claim("the amortization gap on held-out data grows as the encoder overfits" if split == "test" else
                         "(for contrast) the amortization gap on training points", judge(
                             f"amortization gap at epoch {last} > at epoch {quarter}", per_point(curve[last][split], "amortization_gap"),
                             per_point(curve[quarter][split], "amortization_gap")).to_dict(), f"{name}, {split}")
        growth = {split: per_point(curve[last][split], "amortization_gap") - per_point(curve[quarter][split], "amortization_gap")
                  for split in ("test", "train")}
        report.claim("... and it grows more on held-out than on training points (overfitting, not a change of both)", judge_unpaired(
            f"growth of the amortization gap, epoch {quarter} to {last}: held-out > training", growth["test"], growth["train"]).to_dict(), name)
        report.claim("the encoder overfits: its held-out ELBO falls", judge(
            f"held-out L[q] at epoch {quarter} > at epoch {last}", per_point(curve[quarter]["test"], "elbo_amortized"),
            per_point(curve[last]["test"], "elbo_amortized")).to_dict(), name)
    report.table(["model", "epoch", "split", "log p(x)", "L[q*]", "L[q]", "approximation gap", "amortization gap"], rows)
    report.text(f"{points} training and {points} held-out points per snapshot; log p(x): IWAE bound, K = {b.log_px_samples}, "
                "per point with the proposal of highest ELBO among the snapshot's q and q*.")
    report.figure(FIGURES[0], lambda path: _figure(results, path), "both gaps against epochs, on training and held-out points")
    return report


def _figure(results, path: str) -> None:
    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.8 * len(results)), squeeze=False, sharex="row")
    for row, (name, curve) in enumerate(results.items()):
        epochs = sorted(curve)
        for col, split in enumerate(("train", "test")):
            ax = axes[row, col]
            for quantity, color in (("amortization_gap", "C0"), ("approximation_gap", "C1")):
                stats = [curve[e][split]["quantities"][quantity] for e in epochs]
                ax.errorbar(epochs, [s["mean"] for s in stats], yerr=[s["se"] for s in stats], fmt="o-", color=color, capsize=3,
                            label=quantity.replace("_", " "))
            ax.set_title(f"{name}: {'training' if split == 'train' else 'held-out'} points")
            ax.set_xlabel("epoch")
            ax.set_ylabel("nats")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, path)
