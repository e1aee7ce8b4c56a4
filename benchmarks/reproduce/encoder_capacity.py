"""Experiment 2: encoder capacity (Cremer, Li & Duvenaud 2018, Section 5.3, "increasing the encoder's capacity").

FFG encoders from linear to the budget's largest, under two protocols:

* **joint** — a VAE trained from scratch with each encoder (the paper's "larger encoder" models): the
  decoder changes with the encoder, so the gaps of different rows belong to different models;
* **fixed decoder** — each encoder trained alone on the frozen decoder of experiment 1's FFG model:
  log p(x) and q*_FFG are then the same for every row, and only the amortization gap can change.

Claims, paired on the same points: a more expressive encoder shrinks the amortization gap (smallest
encoder's gap > largest's), while the approximation gap stays: an equivalence test
(:func:`inference.claims.judge_equal`), holding only when the whole interval of the difference lies
within a margin of :data:`STAYS_MARGIN` of the two gaps' mean (at least :data:`STAYS_FLOOR` nats);
"within noise" there means the points cannot tell, not support. Held-out points show whether a
larger encoder's gain on training points carries over or is lost to overfitting.

Under the fixed decoder the *true* log p(x) and the best q* are the same for every row. log p(x) is
estimated once for the decoder and shared by every row (and by experiments 1 and 3:
:mod:`benchmarks.reproduce.log_px`); q* is still fitted per row (from each encoder's output), so a row's
approximation gap carries its own optimization noise.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from benchmarks.report import save_figure
from inference.claims import judge, judge_equal

from .models import encoder_on_fixed_decoder, num_parameters, per_point, sizes_label, vae
from .report import Report, stat

NAME = "encoder-capacity"
TITLE = "Encoder capacity (Cremer, Li & Duvenaud 2018)"
FIGURES = ("encoder-capacity.png",)
PROTOCOLS = ("joint", "fixed decoder")
STAYS_MARGIN = 0.1  #: "the approximation gap stays": within this share of the two gaps' mean ...
STAYS_FLOOR = 0.05  #: ... and never less than this many nats


def run(runner) -> Report:
    name, model, _, _ = vae(runner, "ffg")  # experiment 1's FFG model: its decoder is the fixed one (its evaluation is not needed)
    base = {"name": name, "model": model}
    sizes = runner.budget.encoder_sizes
    results = {protocol: {} for protocol in PROTOCOLS}
    rows = []
    for protocol in PROTOCOLS:
        for hidden in sizes:
            if protocol == "joint":
                name, model, guide, _ = vae(runner, "ffg", hidden)
            else:
                name, model, guide, _ = encoder_on_fixed_decoder(runner, "ffg", hidden, base["name"], base["model"])
            splits = {split: runner.gaps(name, model, guide, split, families=(), log_px="iwae") for split in ("train", "test")}
            label = sizes_label(hidden)
            results[protocol][label] = {"model": name, "parameters": num_parameters(guide), "splits": splits}
            for split, s in splits.items():
                q = s["quantities"]
                rows.append([protocol, label, results[protocol][label]["parameters"], split, stat(q["log_px"]), stat(q["elbo_local"]),
                             stat(q["elbo_amortized"]), stat(q["approximation_gap"]), stat(q["amortization_gap"])])
    report = Report(NAME, TITLE, {"encoders": [list(s) for s in sizes], "protocols": results})
    small, large = sizes_label(sizes[0]), sizes_label(sizes[-1])
    for protocol in PROTOCOLS:
        for split in ("train", "test"):
            a, z = results[protocol][small]["splits"][split], results[protocol][large]["splits"][split]
            report.claim("a more expressive encoder shrinks the amortization gap", judge(
                f"amortization gap, encoder {small} > encoder {large}", per_point(a, "amortization_gap"), per_point(z, "amortization_gap")).to_dict(),
                f"{protocol}, {split}")
            big, small_gap = per_point(z, "approximation_gap"), per_point(a, "approximation_gap")
            margin = max(STAYS_FLOOR, STAYS_MARGIN * float(torch.cat([big, small_gap]).mean()))
            report.claim("... while the approximation gap stays", judge_equal(
                f"approximation gap, encoder {large} = encoder {small} (within {margin:.3f} nats)", big, small_gap, margin).to_dict(),
                f"{protocol}, {split}")
    report.table(["protocol", "encoder", "parameters", "split", "log p(x)", "L[q*_FFG]", "L[q]", "approximation gap", "amortization gap"], rows)
    report.text(f"Every model trained {runner.budget.epochs} epochs; fixed decoder: `{base['name']}` (experiment 1). log p(x): each decoder's, "
                "shared by every evaluation of it on these points (the section below).")
    report.figure(FIGURES[0], lambda path: _figure(results, sizes, path), "gaps against encoder size")
    return report


def _figure(results, sizes, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    labels = [sizes_label(s) for s in sizes]
    for ax, split in zip(axes, ("train", "test")):
        for protocol, style in zip(PROTOCOLS, ("-", "--")):
            for quantity, color in (("amortization_gap", "C0"), ("approximation_gap", "C1")):
                stats = [results[protocol][label]["splits"][split]["quantities"][quantity] for label in labels]
                ax.errorbar(range(len(labels)), [s["mean"] for s in stats], yerr=[s["se"] for s in stats], fmt="o" + style, color=color,
                            capsize=3, label=f"{quantity.replace('_', ' ')} ({protocol})")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("encoder hidden layers")
        ax.set_title(f"{split} points")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("nats")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)
