"""The trained pairs the experiments share, each trained once per ``--out`` (:meth:`Runner.train`), and the helpers that read them.

* ``vae-ffg`` and ``vae-flow`` — the paper's two models: the same VAE trained with an FFG encoder and
  with a flow encoder (an FFG base through ``flow_layers`` IAF transforms conditioned on the encoder's
  last hidden layer); both keep snapshots for the gaps over training;
* ``vae-ffg-enc<sizes>`` / ``vae-flow-enc<sizes>`` — the same with other encoder sizes (encoder capacity);
* ``encoder-<family>-<sizes>-on-ffg-decoder`` — an encoder trained alone on the frozen decoder of ``vae-ffg``.
"""

from __future__ import annotations

from typing import Any

import torch

from inference.claims import judge

FLOW = "iaf"  #: the flow family of the flow encoder and of q*_flow


def sizes_label(sizes) -> str:
    return "-".join(map(str, sizes)) if sizes else "linear"


def vae(runner, family: str = "ffg", encoder_hidden=None, *, train_points: int | None = None, snapshot_every: int | None = None,
        **train_overrides: Any):
    """The experiments' VAE with an encoder of ``family`` (``ffg`` or the flow) and ``encoder_hidden`` sizes, trained (on the
    first ``train_points`` training points only, when given: name suffix ``-n<points>``)."""
    b = runner.budget
    encoder = list(b.hidden) if encoder_hidden is None else list(encoder_hidden)
    name = f"vae-{'flow' if family == FLOW else family}" + ("" if encoder == list(b.hidden) else f"-enc{sizes_label(encoder)}")
    name += "" if train_points is None else f"-n{train_points}"
    cfg = runner.vae_config(guide=family, encoder_hidden=encoder)
    model, guide, done = runner.train(name, cfg, runner.train_options(**train_overrides), snapshots=snapshot_every or b.snapshot_every,
                                      train_points=train_points)
    return name, model, guide, done


def encoder_on_fixed_decoder(runner, family: str, encoder_hidden, decoder_name: str, decoder_model):
    """An encoder of ``family`` and ``encoder_hidden`` trained alone (the decoder ``decoder_name`` frozen) for the budget's epochs."""
    cfg = runner.vae_config(guide=family, encoder_hidden=list(encoder_hidden))
    name = f"encoder-{'flow' if family == FLOW else family}-{sizes_label(encoder_hidden)}-on-{decoder_name}"
    model, guide, done = runner.train(name, cfg, runner.train_options(), decoder=(decoder_name, decoder_model))
    return name, model, guide, done


def num_parameters(module: torch.nn.Module) -> int:
    """Parameters in use: a masked layer's (Pyro's ``MaskedLinear`` in a MADE) masked-out weights, which never act, are not counted."""
    total = 0
    for m in module.modules():
        mask = getattr(m, "mask", None)
        for name, p in m.named_parameters(recurse=False):
            used = name == "weight" and isinstance(mask, torch.Tensor) and mask.shape == p.shape
            total += int(mask.count_nonzero()) if used else p.numel()
    return total


def iwae_log_px(summary: dict[str, Any]) -> torch.Tensor:
    """Per-datapoint IWAE estimate of log p(x) of a gap summary, whichever estimate it reported: the same estimator
    for every model a claim compares (the reported one is the higher of AIS and IWAE, which can differ between models)."""
    estimates = summary["log_px"].get("estimates") or {}
    if "iwae" in estimates:
        return torch.tensor(estimates["iwae"]["per_point"])
    if summary["log_px"]["method"] != "iwae":
        raise ValueError(f"the summary reports log p(x) by {summary['log_px']['method']!r} and keeps no IWAE estimate")
    return torch.tensor(summary["per_point"]["log_px"])


def per_point(summary: dict[str, Any], quantity: str, family: str | None = None) -> torch.Tensor:
    """Per-datapoint values of a gap summary: a quantity of the guide's own family, or (``family``) the
    approximation gap / L[q*] of a further family."""
    if family is None or family == summary["local"]["family"]:
        return torch.tensor(summary["per_point"][quantity])
    log_px = torch.tensor(summary["per_point"]["log_px"])
    elbo = torch.tensor(summary["others"][family]["per_point"])
    return {"elbo_local": elbo, "approximation_gap": log_px - elbo}[quantity]


def family_stat(summary: dict[str, Any], family: str) -> dict[str, float]:
    """L[q*] of ``family`` in a gap summary (own or further), as ``{"mean", "se"}``."""
    if family == summary["local"]["family"]:
        return summary["quantities"]["elbo_local"]
    return summary["others"][family]["elbo"]


def gap_claim(report, paper_claim: str, summary: dict[str, Any], context: str) -> None:
    """The paper's main claim on one model and split: the amortization gap is the larger part (paired)."""
    report.claim(paper_claim, judge("amortization gap > approximation gap", per_point(summary, "amortization_gap"),
                                    per_point(summary, "approximation_gap")).to_dict(), context)
