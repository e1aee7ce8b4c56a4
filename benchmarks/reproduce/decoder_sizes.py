"""Experiment 10: decoder capacity (the reference code's ``decoder_sizes_exp``; Cremer, Li & Duvenaud 2018).

The encoder is held at the budget's FFG encoder while the decoder grows: one VAE per decoder in the
budget's ``decoder_sizes`` (the reference code: 0, 2 and 4 hidden layers of 200 units, encoder 200-200),
each trained jointly from scratch with the same seed and training options. The model whose decoder is
the budget's own is experiment 1's FFG model (trained once, shared). For each, on training and held-out
points: log p(x) (IWAE bound, proposal the best of q and q*), L[q*_FFG], L[q], the approximation gap
log p(x) − L[q*_FFG] and the amortization gap L[q*_FFG] − L[q].

Claims, each a paired test over the same points (every model is evaluated on the same datapoints, in the
same binarization), smallest decoder against largest:

* a larger decoder fits the data better: log p(x) rises;
* with the encoder fixed, the amortization gap grows as the decoder grows (a more flexible generator has
  posteriors that vary more from point to point, which the same encoder must follow);
* the approximation gap shrinks as the decoder grows (a more flexible generator can shape its posteriors
  towards the FFG, the effect experiment 4 measures between families).

The directions are the hypotheses the reference experiment was run to test, as we read it; each is checked
here, not asserted.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from benchmarks.report import save_figure
from inference.claims import judge

from .models import num_parameters, per_point, sizes_label, vae
from .report import Report, stat

NAME = "decoder-sizes"
TITLE = "Decoder capacity with the encoder fixed (Cremer, Li & Duvenaud 2018, reference code's decoder_sizes_exp)"
FIGURES = ("decoder-sizes.png",)
SPLITS = ("train", "test")


def decoder_vae(runner, decoder_hidden):
    """The VAE with the budget's FFG encoder and a decoder of ``decoder_hidden`` sizes, trained with the budget's options.

    With the budget's own decoder it is experiment 1's ``vae-ffg`` (the same configuration, so the same trained model)."""
    b = runner.budget
    decoder = list(decoder_hidden)
    if decoder == list(b.hidden):
        return vae(runner, "ffg")
    name = f"vae-ffg-dec{sizes_label(decoder)}"
    cfg = runner.vae_config(guide="ffg", hidden=decoder, encoder_hidden=list(b.hidden))
    model, guide, done = runner.train(name, cfg, runner.train_options())
    return name, model, guide, done


def decoder_claims(report: Report, results: dict, labels: list[str]) -> None:
    """The three claims, smallest decoder (``labels[0]``) against largest (``labels[-1]``), per split (paired)."""
    small, large = labels[0], labels[-1]
    for split in SPLITS:
        a, z = results[small]["splits"][split], results[large]["splits"][split]
        report.claim("a larger decoder fits the data better (log p(x) rises)", judge(
            f"log p(x), decoder {large} > decoder {small}", per_point(z, "log_px"), per_point(a, "log_px")).to_dict(), split)
        report.claim("with the encoder fixed, the amortization gap grows as the decoder grows", judge(
            f"amortization gap, decoder {large} > decoder {small}", per_point(z, "amortization_gap"),
            per_point(a, "amortization_gap")).to_dict(), split)
        report.claim("... and the approximation gap shrinks", judge(
            f"approximation gap, decoder {small} > decoder {large}", per_point(a, "approximation_gap"),
            per_point(z, "approximation_gap")).to_dict(), split)


def run(runner) -> Report:
    b = runner.budget
    sizes = b.decoder_sizes
    if len(sizes) < 2:
        raise ValueError(f"the decoder-sizes experiment needs at least two decoders, the budget has {list(sizes)}")
    results, rows = {}, []
    for hidden in sizes:
        name, model, guide, done = decoder_vae(runner, hidden)
        splits = {split: runner.gaps(name, model, guide, split, families=(), log_px="iwae") for split in SPLITS}
        label = sizes_label(hidden)
        results[label] = {"model": name, "decoder": list(hidden), "decoder_parameters": num_parameters(model),
                          "train_seconds": done["train_seconds"], "splits": splits}
        for split, s in splits.items():
            q = s["quantities"]
            rows.append([label, results[label]["decoder_parameters"], split, stat(q["log_px"]), stat(q["elbo_local"]), stat(q["elbo_amortized"]),
                         stat(q["approximation_gap"]), stat(q["amortization_gap"]), f"{s['local']['converged_fraction']:.2f}"])
    labels = [sizes_label(s) for s in sizes]
    report = Report(NAME, TITLE, {"encoder": list(b.hidden), "decoders": [list(s) for s in sizes], "models": results})
    decoder_claims(report, results, labels)
    report.table(["decoder", "decoder parameters", "split", "log p(x)", "L[q*_FFG]", "L[q]", "approximation gap", "amortization gap",
                  "q* stopped by the rule"], rows)
    report.text(f"Encoder {sizes_label(b.hidden)} (FFG) for every model; each trained {b.epochs} epochs with seed {runner.seed}; "
                f"{b.num_points} training and {b.num_points} held-out points, the same for every model. log p(x): IWAE bound, "
                f"K = {b.log_px_samples}. The decoder `{sizes_label(b.hidden)}` model is experiment 1's `vae-ffg`.")
    report.figure(FIGURES[0], lambda path: _figure(results, labels, path), "gaps and log p(x) against decoder size")
    return report


def _figure(results: dict, labels: list[str], path: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    x = range(len(labels))
    for ax, split in zip(axes[:2], SPLITS):
        for quantity, color in (("amortization_gap", "C0"), ("approximation_gap", "C1")):
            stats = [results[label]["splits"][split]["quantities"][quantity] for label in labels]
            ax.errorbar(x, [s["mean"] for s in stats], yerr=[s["se"] for s in stats], fmt="o-", color=color, capsize=3,
                        label=quantity.replace("_", " "))
        ax.set_title(f"gaps, {split} points")
        ax.set_ylabel("nats")
    for split, style in zip(SPLITS, ("-", "--")):
        stats = [results[label]["splits"][split]["quantities"]["log_px"] for label in labels]
        axes[2].errorbar(x, [s["mean"] for s in stats], yerr=[s["se"] for s in stats], fmt="o" + style, color="C2", capsize=3,
                         label=f"{split} points")
    axes[2].set_title("log p(x) (IWAE)")
    for ax in axes:
        ax.set_xticks(list(x), labels)
        ax.set_xlabel("decoder hidden layers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)
