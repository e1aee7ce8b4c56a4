"""Markdown tables and figures of the benchmarks' results: the one place that turns result dicts into text and PNG."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

from inference.diagnostics import ACTIVE_THRESHOLD
from inference.gaps import QUANTITIES
from inference.io import atomic_write_bytes

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

LABELS = {
    "log_px": "log p(x)", "elbo_local": "L[q*]", "elbo_amortized": "L[q]",
    "approximation_gap": "approximation gap", "amortization_gap": "amortization gap", "inference_gap": "inference gap",
}


def cell(stat: dict[str, float], digits: int = 3) -> str:
    """``mean ± se`` of a ``{"mean", "se"}`` statistic."""
    return f"{stat['mean']:.{digits}f} ± {stat['se']:.{digits}f}"


def gap_table(splits: dict[str, dict[str, Any]]) -> str:
    """One row per split: log p(x), L[q*] of the guide's own family, L[q*] of the further families, L[q] and the gaps."""
    first = next(iter(splits.values()))
    family, others = first["local"]["family"], list(first["others"])
    labels = [LABELS["log_px"], f"L[q*_{family}]", *(f"L[q*_{o}]" for o in others), *(LABELS[q] for q in QUANTITIES[2:])]
    rows = ["| split | N | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    for split, s in splits.items():
        q = s["quantities"]
        cells = [cell(q["log_px"]), cell(q["elbo_local"]), *(cell(s["others"][o]["elbo"]) for o in others), *(cell(q[k]) for k in QUANTITIES[2:])]
        rows.append(f"| {split} | {s['n_points']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def gaps_markdown(result: dict[str, Any]) -> str:
    """The gap benchmark's report: the table, Monte Carlo errors, q* stopping, PSIS k-hat, exact answers, the protocol."""
    cfg = result["config"]
    guide = cfg["model"].get("guide", "own")
    lines = [
        f"# Inference gaps: {cfg['model']['name']} ({guide} guide) on {cfg['data']['dataset']} ({cfg['data']['likelihood']})",
        "",
        "Nats per datapoint; mean ± standard error of the mean over the evaluated datapoints.",
        "",
        gap_table(result["splits"]),
        "",
        "Monte Carlo standard errors alone (given these datapoints):",
        "",
    ]
    for split, s in result["splits"].items():
        lines.append(f"- {split}: " + ", ".join(f"{LABELS[q]} {s['quantities'][q]['mc_se']:.4f}" for q in QUANTITIES))
        log_px, local = s["log_px"], s["local"]
        proposal = (f"; a q* was the log p(x) proposal for {100 * log_px['proposal_local_fraction']:.0f}% of points"
                    if log_px["method"] == "iwae" else "")
        lines.append(f"  local q* ({local['family']}): {100 * local['converged_fraction']:.0f}% stopped by the rule, "
                     f"{local['steps_mean']:.0f} steps on average{proposal}")
        k = log_px["pareto_k"]
        if k is not None:
            flagged = k["high_points"]
            lines.append(
                f"  PSIS k̂ of the log p(x) weights: mean {k['mean']:.2f}, max {k['max']:.2f}; "
                + (f"**{100 * k['high_fraction']:.0f}% of points above 0.7 (unreliable estimates): {', '.join(map(str, flagged[:20]))}"
                   + (" ..." if len(flagged) > 20 else "") + "**" if flagged else "no point above 0.7")
            )
        for claim in s.get("claims", ()):
            lines.append(f"  claim (Cremer et al. 2018) {claim['text']}")
        exact = s.get("exact")
        if exact is not None:
            gap = exact["approximation_gap"]
            lines.append(f"  exact ({exact['source']}): log p(x) {exact['log_px']['mean']:.3f}"
                         + (f", approximation gap {gap:.4f}" if gap is not None else ""))
    ev = cfg["evaluation"]
    ais_text = (f"AIS with {ev.get('ais_chains')} chains, {ev.get('ais_steps')} {ev.get('ais_schedule')} steps from the {ev.get('ais_init')}, "
                f"HMC with {ev.get('ais_leapfrog')} leapfrog steps")
    iwae_text = f"IWAE bound with K={ev['log_px_samples']}"
    estimator = {"ais": ais_text, "iwae": iwae_text}.get(ev.get("log_px"), f"the higher of {ais_text} and the {iwae_text}")
    for split, s in result["splits"].items():
        estimates = s["log_px"]["estimates"]
        if "ais" in estimates and "iwae" in estimates:
            lines.append(f"- {split}: log p(x) by AIS {cell(estimates['ais'])}, by IWAE {cell(estimates['iwae'])}; "
                         f"reported: {s['log_px']['method']}")
    lines += ["", f"log p(x): {estimator}; ELBOs with {ev['elbo_samples']} samples; "
              f"local q*: Adam lr {ev['local_lr']}, {ev['local_samples']} samples/step, stop after {ev['local_patience']} "
              f"windows of {ev['local_window']} steps without improvement (cap {ev['local_max_steps']})."]
    return "\n".join(lines) + "\n"


def compare_markdown(result: dict[str, Any], published: dict[tuple[str, str, int], float]) -> str:
    """The comparison's table: one row per (objective, K), skipped pairs, and published NLLs where the protocol has them."""
    cfg = result["config"]
    model = cfg["model"]["name"]
    published = any((model, r["objective"], r["num_particles"]) in published for r in result["runs"]) and cfg["protocol"] == "iwae-mnist"
    train = cfg["train"]
    ev = cfg["evaluation"]
    lines = [
        f"# Inference algorithms compared: {model} on {cfg['data']['dataset']} ({cfg['data']['likelihood']}, {cfg['data']['binarization'] or 'continuous'})",
        "",
        f"Same initialization, data order and seed; {train['epochs']} epoch{'s' if train['epochs'] != 1 else ''} of batch {train['batch_size']} "
        f"(Adam lr {train['lr']}, {train['lr_schedule']} schedule) for every run. "
        f"Test: {ev['test_points']} points, log p̂(x) with K={ev['log_px_samples']}, "
        f"ELBO with {ev['elbo_samples']} samples; ± is the standard error over test points.",
        "",
    ]
    header = "| objective | K | test log p̂(x) | test ELBO | active units | SNR encoder | SNR decoder | ms/step |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if published:
        header += " published −log p(x) |"
        rule += "---:|"
    lines += [header, rule]
    for r in result["runs"]:
        lp, lb, units, snr = r["test_log_px"], r["test_elbo"], r["active_units"], r["snr"]
        row = (
            f"| {r['objective']} | {r['num_particles']} | {lp['mean']:.2f} ± {lp['se']:.2f} | {lb['mean']:.2f} ± {lb['se']:.2f} | "
            f"{units['active']}/{units['total']} | {snr['encoder']['mean']:.3f} | {snr['decoder']['mean']:.3f} | {1000 * r['seconds_per_step']:.1f} |"
        )
        if published:
            ref = published.get((model, r["objective"], r["num_particles"]))
            row += f" {ref:.2f} |" if ref is not None else " |"
        lines.append(row)
    paired = [r["paired"] for r in result["runs"] if r.get("paired")]
    if paired:
        lines += ["", f"Paired differences on the same test points, against {paired[0]['against']} (verdict at {paired[0]['test_log_px']['z']:g} SE):", ""]
        lines += [f"- {p[key]['text']}" for p in paired for key in ("test_log_px", "test_elbo")]
    for s in result["skipped"]:
        lines.append(f"\nSkipped {s['objective']} with K={s['num_particles']}: {s['reason']}")
    lines += ["", "SNR: mean over parameter components of |E[gradient]| / sd[gradient] of the objective's own estimator "
              f"({ev['snr_draws']} draws on one training batch); active units: variance over test points of "
              f"the posterior mean > {ACTIVE_THRESHOLD}."]
    if published:
        lines.append("Published: Burda, Grosse & Salakhutdinov (2016), Table 1, negative test log-likelihood after 3280 epochs.")
    return "\n".join(lines) + "\n"


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as PNG atomically to ``path`` and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def curves_figure(curves: dict[str, list[dict[str, float]]], path: str, ylabel: str, title: str) -> None:
    """Learning curves side by side against training steps and against wall-clock training time (``train_seconds``)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for label, pts in curves.items():
        marker = "o" if len(pts) < 30 else None
        axes[0].plot([p["step"] for p in pts], [p["bound"] for p in pts], marker=marker, label=label)
        if all("train_seconds" in p for p in pts):
            axes[1].plot([p["train_seconds"] / 60 for p in pts], [p["bound"] for p in pts], marker=marker, label=label)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("wall-clock training time (minutes, evaluations excluded)")
    axes[0].set_ylabel(ylabel)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def compare_plot(result: dict[str, Any], path: str) -> None:
    """The learning curves of every run, against steps and against wall-clock time, as a PNG written atomically to ``path``."""
    ev = result["config"]["evaluation"]
    curves = {f"{r['objective']} K={r['num_particles']}": r["curve"] for r in result["runs"]}
    curves_figure(curves, path, f"test IWAE bound, K={ev['curve_samples']} (nats)",
                  f"{result['config']['model']['name']} on {result['config']['data']['dataset']}: {ev['curve_points']} test points")


def speed_markdown(result: dict[str, Any]) -> str:
    """The speed benchmark's report: each timing against its hand-written floor, measured in the same run."""
    a, lines = result.get("training_step"), ["# Speed", ""]
    if a:
        lines += [
            f"Training step, batch {result['config']['batch_size']}, MNIST-sized VAE ({result['data']}), median of "
            f"{result['config']['repeats']} interleaved blocks of {result['config']['block']} steps:",
            "",
            "| step | ms/step | ratio to pure PyTorch |",
            "|---|---:|---:|",
            f"| hand-written PyTorch | {a['pure_ms']:.2f} | 1.00 |",
            f"| ours, objective elbo (Trace_ELBO's estimator, computed eagerly) + torch Adam | {a['core_ms']:.2f} | {a['core_over_pure']:.3f} "
            f"(blocks {a['core_over_pure_range'][0]:.3f}-{a['core_over_pure_range'][1]:.3f}) |",
            f"| ours, objective captured-elbo: the same estimator replayed from a recorded graph | {a['captured_ms']:.2f} | "
            f"{a['captured_over_pure']:.3f} (blocks {a['captured_over_pure_range'][0]:.3f}-{a['captured_over_pure_range'][1]:.3f}) |",
            f"| plain Pyro: SVI + pyro.optim + PyroModule | {a['svi_ms']:.2f} | {a['svi_over_pure']:.3f} |",
        ]
        for name, t in result.get("trainer", {}).items():
            lines.append(f"| ours ({name}) through fit's loop, steady state, vs a hand-written loop ({t['pure_loop_ms']:.2f} ms) "
                         f"| {t['trainer_ms']:.2f} | {t['ratio']:.3f} (runs {t['ratio_range'][0]:.3f}-{t['ratio_range'][1]:.3f}) |")
            if "loop_ratio" in t:
                lines.append(f"| ours ({name}) through fit's loop vs a hand-written loop calling the same loss ({t['own_loss_loop_ms']:.2f} ms): "
                             f"the loop's overhead | {t['trainer_ms']:.2f} | {t['loop_ratio']:.3f} "
                             f"(runs {t['loop_ratio_range'][0]:.3f}-{t['loop_ratio_range'][1]:.3f}) |")
        lines.append("")
    b = result.get("local")
    if b:
        lines += [
            f"Local q* on {b['points']} MNIST points (window {b['rule']['window']}, patience {b['rule']['patience']}, "
            f"cap {b['rule']['max_steps']} steps):",
            "",
            "| local q* | seconds | mean steps |",
            "|---|---:|---:|",
            f"| vectorized (one tensor, masked) | {b['vectorized_s']:.1f} | {b['vectorized_mean_steps']:.0f} |",
            f"| per-datapoint Python loop | {b['loop_s']:.1f} | {b['loop_mean_steps']:.0f} |",
            f"| speed-up | {b['speedup']:.1f}x | |",
            "",
            "Milliseconds per datapoint per step: vectorized {vectorized:.2f}, loop {loop:.2f}, hand-written PyTorch "
            "vectorized step (no Pyro, no masking) {hand_written_vectorized:.2f}; so doing this step's arithmetic in eager "
            "PyTorch, vectorized or not, beats the loop by at most about {ceiling:.1f}x on this machine.".format(**b["ms_per_point_step"], ceiling=b["ceiling"]),
            "",
        ]
    c = result.get("ais")
    if c:
        lines += [
            f"AIS on {c['points']} MNIST points: {c['chains']} chains, {c['steps']} intermediate distributions, "
            f"{c['leapfrog']} leapfrog steps ({c['gradient_evaluations']:,} per-chain gradient evaluations):",
            "",
            "| AIS | seconds | gradient evaluations / s |",
            "|---|---:|---:|",
            f"| vectorized (datapoints x chains in one tensor) | {c['vectorized_s']:.1f} | {c['vectorized_evals_per_s']:,.0f} |",
            f"| per-datapoint Python loop | {c['loop_s']:.1f} | {c['loop_evals_per_s']:,.0f} |",
            f"| speed-up | {c['speedup']:.1f}x | |",
            "",
        ]
    d = result.get("evaluation")
    if d:
        lines += [
            f"Evaluation: the IWAE bound with K = {d['num_samples']} on {d['points']} MNIST points, the same chunks:",
            "",
            "| evaluator | seconds | mean log p̂(x) |",
            "|---|---:|---:|",
            f"| ours: iwae_log_px | {d['ours_s']:.2f} | {d['mean_log_px']['ours']:.2f} |",
            f"| hand-written PyTorch | {d['hand_written_s']:.2f} | {d['mean_log_px']['hand_written']:.2f} |",
            f"| ratio | {d['ratio']:.2f} | |",
            "",
        ]
    where = result.get("device_name") or result["machine"]
    lines.append(f"Device: {result.get('device', 'cpu')} ({where}); machine {result['machine']}, torch {result['torch']} with {result['threads']} threads.")
    return "\n".join(lines) + "\n"


MIXTURE_HEADER = (
    "| data | K | covariance | ours (test) | sklearn EM (test) | difference | ours (train) | sklearn (train) |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|"
)


def mixture_row(r: dict[str, Any]) -> str:
    """One row of the mixture benchmark: our held-out and training log-likelihood per point against EM's."""
    return (f"| {r['data']} | {r['components']} | {r['covariance']} | {r['ours_test']:.4f} | {r['sklearn_test']:.4f} | "
            f"{r['difference']:+.4f} | {r['ours_train']:.4f} | {r['sklearn_train']:.4f} |")


def mixture_markdown(rows: list[dict[str, Any]], restarts: int, seed: int) -> str:
    """The mixture benchmark's table."""
    note = f"\nHeld-out log-likelihood per point (nats); best of {restarts} starts each, seed {seed}.\n"
    return "\n".join([MIXTURE_HEADER, *(mixture_row(r) for r in rows)]) + "\n" + note
