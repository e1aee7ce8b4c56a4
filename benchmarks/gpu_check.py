"""One command that checks the toolkit on a GPU: ``python -m benchmarks.gpu_check [--device cuda]``.

Each check runs on its own and is recorded (passed or failed, with its figures and its seconds); a
failed check does not stop the others. Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``,
then exits with status 2 naming the failed checks, if any. With ``--device cpu --tiny`` every check runs at a tiny size on a
CPU (the test suite does this, so the command never rots before a GPU is at hand).

1. ``environment`` — torch, its CUDA build, the card and its capability.
2. ``gaps-twice`` — ``benchmarks.gaps`` twice on the device with the same seed: identical JSON.
3. ``gaps-on-cpu`` — the device-trained checkpoint evaluated again on the CPU (``--checkpoint``): every
   quantity agrees with the device's run within 3 standard errors of the paired difference.
4. ``returned-devices`` — every tensor ``elbo``, ``iwae_log_px``, ``ais`` and ``gap_decomposition`` return
   lives on the input's device.
5. ``flow-ais-checkpoint`` — an IAF-encoder VAE trained on the device, AIS on it there, its checkpoint
   read back on the CPU and its ELBO agreeing with the device's.
6. ``gmm-sbn`` — the Gaussian mixture (``enum``) and the sigmoid belief net (``tracegraph``) trained on the
   device, their exact log p(x) finite and on the device.
7. ``compare`` — ``compare_objectives`` over elbo, captured-elbo, iwae, iwae-dreg and rws on the device.
8. ``resume`` — 2 epochs then a resume to 3, against 3 at once: identical parameters; and an evaluation block run
   again from the generators' saved state (CPU and device, as ``benchmarks.reproduce --resume`` restores it): identical.
9. ``host-syncs`` — host reads per training step of the sync-free objectives (CUDA's sync debug mode on a
   GPU, a dispatch-level count everywhere; ``elbo`` among them, computed eagerly), of ``meanfield`` (Pyro's own
   ELBO machinery) for contrast.
10. ``evaluation`` — ``iwae_log_px`` with K = 5000 on 1000 MNIST test points, and AIS at two memory
    budgets, timed, with the device's peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import pyro
import torch

from benchmarks.datasets import DEFAULT_DATA_ROOT, load_dataset
from benchmarks.options import run_cli
from benchmarks.outdir import OutputFolder
from inference import ais, elbo, gap_decomposition, iwae_log_px
from inference.compare import CompareOptions, compare_objectives
from inference.enumeration import exact_log_px
from inference.host_syncs import count_host_syncs
from inference.local import LocalOptions, StoppingRule
from inference.objectives import make_loss
from inference.sampling import generator_state, set_generator_state
from inference.stats import mean_se
from inference.training import DEVICES, TrainOptions, fit, load_trained, resolve_device
from ppl_models import build_model, model_config

#: The gap benchmark's settings for the checks: tiny, so they measure the code path, not the model.
GAPS_TRAIN = ["--epochs", "2", "--latent-dim", "4", "--hidden", "32", "--encoder-hidden", "32"]
GAPS_EVAL = [
    "--num-points", "8", "--log-px-samples", "256", "--elbo-samples", "256", "--local-samples", "8", "--local-window", "10",
    "--local-patience", "2", "--local-max-steps", "60", "--no-progress", "--log-px", "max", "--ais-chains", "8", "--ais-steps", "20",
]
#: Sizes of the evaluation timing: full (a GPU) and tiny (a CPU in the tests).
EVALUATION = {"full": {"points": 1000, "samples": 5000, "ais_points": 100, "ais_chains": 100, "ais_steps": 100},
              "tiny": {"points": 10, "samples": 50, "ais_points": 4, "ais_chains": 4, "ais_steps": 3}}
SYNC_FREE = ("elbo", "captured-elbo", "iwae", "iwae-dreg", "iwae-stl")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensors_of(value: Any) -> list[torch.Tensor]:
    """Every tensor inside ``value`` (a tensor, a tuple/NamedTuple/list/dict, or an object's attributes)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_of(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_of(v)]
    if hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
        return [t for v in vars(value).values() for t in tensors_of(v)]
    return []


def small_vae_config(data_dim: int, guide: str = "ffg", **extra) -> dict[str, Any]:
    return model_config("vae", data_dim, "bernoulli", latent_dim=4, hidden=[32], encoder_hidden=[32], guide=guide, **extra)


def small_vae(data_dim: int, guide: str = "ffg", **extra) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return build_model(small_vae_config(data_dim, guide, **extra))


# ---- the checks: each returns its figures and raises AssertionError when it fails ---------------------------------


def check_environment(ctx: dict[str, Any]) -> dict[str, Any]:
    device = ctx["device"]
    out = {"torch": torch.__version__, "pyro": pyro.__version__, "cuda_build": torch.version.cuda, "device": str(device),
           "machine": platform.machine(), "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version())
    return out


def _gaps(ctx: dict[str, Any], name: str, *extra: str) -> dict[str, Any]:
    from benchmarks.gaps import cli

    out = os.path.join(ctx["work"], name)
    code = cli([*GAPS_EVAL, "--out", out, "--overwrite", *extra])
    assert code == 0, f"benchmarks.gaps {' '.join(extra)} exited {code}"
    with open(os.path.join(out, "gaps.json")) as f:
        return json.load(f)


def check_gaps_twice(ctx: dict[str, Any]) -> dict[str, Any]:
    device = str(ctx["device"])
    first = _gaps(ctx, "gaps-a", "--device", device, *GAPS_TRAIN)
    second = _gaps(ctx, "gaps-b", "--device", device, *GAPS_TRAIN)
    assert first["splits"] == second["splits"], "the same seed gave other numbers on the device"
    return {"test_log_px": first["splits"]["test"]["quantities"]["log_px"], "identical": True}


def check_gaps_on_cpu(ctx: dict[str, Any]) -> dict[str, Any]:
    checkpoint = os.path.join(ctx["work"], "gaps-a", "checkpoints", "last.ckpt")
    if not os.path.exists(checkpoint):
        _gaps(ctx, "gaps-a", "--device", str(ctx["device"]), *GAPS_TRAIN)
    with open(os.path.join(ctx["work"], "gaps-a", "gaps.json")) as f:
        on_device = json.load(f)
    on_cpu = _gaps(ctx, "gaps-cpu", "--device", "cpu", "--checkpoint", checkpoint)
    agreement = {}
    for split in ("train", "test"):
        for quantity, values in on_device["splits"][split]["per_point"].items():
            difference = torch.tensor(values, dtype=torch.float64) - torch.tensor(on_cpu["splits"][split]["per_point"][quantity], dtype=torch.float64)
            mean, se = mean_se(difference)
            agreement[f"{split}/{quantity}"] = {"difference": mean, "se": se}
            assert abs(mean) <= 3 * se + 1e-3, f"{split} {quantity}: device - cpu = {mean:.4f} ± {se:.4f} (paired, per point)"
    return {"paired_differences": agreement}


def check_returned_devices(ctx: dict[str, Any]) -> dict[str, Any]:
    device, x = ctx["device"], ctx["x"][:6]
    model, guide = (m.to(device) for m in small_vae(x.shape[1]))
    results = {
        "elbo": elbo(model, guide, x, 32),
        "iwae_log_px": iwae_log_px(model, guide, x, 64, pareto=True),
        "ais": ais(model, guide, x, num_chains=4, num_steps=3),
        "gap_decomposition": gap_decomposition(model, guide, x, log_px_samples=64, elbo_samples=32, log_px="max",
                                               local=LocalOptions(num_samples=4, rule=StoppingRule(5, 1, 10)),
                                               ais_options=ctx["tiny_ais"]),
    }
    wrong = {name: sorted({str(t.device) for t in tensors_of(r)} - {str(x.device)}) for name, r in results.items()}
    counted = {name: len(tensors_of(r)) for name, r in results.items()}
    assert all(counted.values()), counted
    assert not any(wrong.values()), f"tensors off the input's device {x.device}: {wrong}"
    return {"tensors_checked": counted}


def check_flow_ais_checkpoint(ctx: dict[str, Any]) -> dict[str, Any]:
    device, x = ctx["device"], ctx["x"]
    model, guide = small_vae(x.shape[1], guide="iaf", flow_layers=2, flow_hidden=[16])
    folder = os.path.join(ctx["work"], "flow")
    result = fit(model, guide, x.cpu(), TrainOptions(epochs=2, batch_size=50), out_dir=folder, device=device.type,
                 run_config={"model": small_vae_config(x.shape[1], "iaf", flow_layers=2, flow_hidden=[16])})
    model, guide = model.to(device).eval(), guide.to(device).eval()
    points = x[:8]
    torch.manual_seed(1)
    on_device = elbo(model, guide, points, 500)
    log_px = ais(model, guide, points, num_chains=8, num_steps=10).log_px
    assert torch.isfinite(log_px.value).all()
    trained = load_trained(result.checkpoint_path)  # onto the CPU
    torch.manual_seed(1)
    on_cpu = elbo(trained.model.eval(), trained.guide.eval(), points.cpu(), 500)
    difference = on_device.value.cpu() - on_cpu.value
    se = (on_device.stderr.cpu() ** 2 + on_cpu.stderr**2).sqrt()
    assert (difference.abs() <= 3 * se + 1e-3).all(), f"ELBO on the device vs on the CPU: {difference.tolist()} (3 SE: {(3 * se).tolist()})"
    return {"ais_log_px": float(log_px.value.mean()), "elbo_device": float(on_device.value.mean()), "elbo_cpu": float(on_cpu.value.mean())}


def check_gmm_sbn(ctx: dict[str, Any]) -> dict[str, Any]:
    device, x = ctx["device"], ctx["x"]
    out = {}
    torch.manual_seed(0)
    gaussian = x.cpu()[:, :8] + 0.1 * torch.randn(len(x), 8)
    for name, data, options, objective in (("gmm", gaussian, {"components": 3}, "enum"), ("sbn", x.cpu(), {"layers": [4]}, "tracegraph")):
        model, guide = build_model(model_config(name, data.shape[1], "gaussian" if name == "gmm" else "bernoulli", **options))
        losses = fit(model, guide, data, TrainOptions(objective=objective, epochs=2, batch_size=50, kl_warmup_epochs=0.0),
                     device=device.type).losses
        model, guide = model.to(device).eval(), guide.to(device).eval()
        value = exact_log_px(model, guide, data[:10].to(device))
        assert value.device == data[:10].to(device).device and torch.isfinite(value).all(), f"{name}: exact log p(x) {value}"
        out[name] = {"last_loss": losses[-1], "exact_log_px": float(value.mean())}
    return out


def check_compare(ctx: dict[str, Any]) -> dict[str, Any]:
    x = ctx["x"].cpu()
    data = (x[: len(x) - 20], x[len(x) - 20 :])
    options = CompareOptions(test_points=20, log_px_samples=64, elbo_samples=16, snr_draws=3, curve_points=20, curve_samples=8)
    objectives = ["elbo", "captured-elbo", "iwae", "iwae-dreg", "rws"]
    comparison = compare_objectives(lambda: small_vae(x.shape[1]), data, objectives, [1, 2], TrainOptions(epochs=2, batch_size=50), options,
                                    device=ctx["device"].type)
    runs = {f"{r['objective']}-K{r['num_particles']}": r["test_log_px"]["mean"] for r in comparison.runs}
    assert {r["objective"] for r in comparison.runs} == set(objectives) and all(math.isfinite(v) for v in runs.values()), runs
    return {"test_log_px": runs, "skipped": [s["objective"] for s in comparison.skipped]}


def check_resume(ctx: dict[str, Any]) -> dict[str, Any]:
    x = ctx["x"].cpu()
    device = ctx["device"].type

    def train(folder: str, epochs: int, resume: bool = False) -> torch.Tensor:
        model, guide = small_vae(x.shape[1])
        fit(model, guide, x, TrainOptions(epochs=epochs, batch_size=50, seed=3), out_dir=os.path.join(ctx["work"], folder), resume=resume,
            device=device, run_config={"check": "resume"})
        return torch.cat([p.detach().cpu().flatten() for p in (*model.parameters(), *guide.parameters())])

    straight = train("resume-straight", 3)
    train("resume-split", 2)
    resumed = train("resume-split", 3, resume=True)
    assert torch.equal(straight, resumed), f"resumed training differs: max |difference| {float((straight - resumed).abs().max())}"

    # an evaluation resumed from a saved block: the generator's state saved after block one (the CPU's and this
    # device's, as benchmarks.reproduce saves it) and restored gives block two's numbers again
    model, guide = small_vae(x.shape[1])
    model.to(ctx["device"]).eval(), guide.to(ctx["device"]).eval()
    points = ctx["x"][:8]
    local = LocalOptions(num_samples=4, rule=StoppingRule(5, 1, 15))

    def block(lo: int, hi: int) -> torch.Tensor:
        result = gap_decomposition(model, guide, points[lo:hi], log_px_samples=32, elbo_samples=16, local=local, log_px="iwae",
                                   max_elements=2**22)  # fixed chunks: the default follows the free memory
        return torch.stack([result.log_px.value, result.elbo_local.value, result.elbo_amortized.value]).cpu()

    torch.manual_seed(5)
    block(0, 4)
    saved = generator_state(ctx["device"])
    second = block(4, 8)
    set_generator_state(saved, ctx["device"])
    again = block(4, 8)
    assert torch.equal(second, again), f"a resumed block differs: max |difference| {float((second - again).abs().max())}"
    return {"identical": True, "parameters": len(straight), "resumed_block_identical": True, "generators": sorted(saved)}


def check_host_syncs(ctx: dict[str, Any]) -> dict[str, Any]:
    device, x = ctx["device"], ctx["x"][:50]
    out = {}
    for objective in (*SYNC_FREE, "meanfield"):
        model, guide = (m.to(device) for m in small_vae(x.shape[1]))
        loss = make_loss(objective, model, guide, 1 if "elbo" in objective or objective == "meanfield" else 5)
        loss.dataset_size = len(ctx["x"])
        for _ in range(2):
            loss(x).backward()
        out[objective] = count_host_syncs(lambda loss=loss: loss(x).backward(), device)
    free = {k: v for k, v in out.items() if k in SYNC_FREE and any(v.values())}
    assert not free, f"host synchronizations in a training step of a sync-free objective: {free}"
    return out


def check_evaluation(ctx: dict[str, Any]) -> dict[str, Any]:
    device, size = ctx["device"], EVALUATION[ctx["size"]]
    points = ctx["test"][: size["points"]]
    torch.manual_seed(0)
    model, guide = build_model(model_config("vae", points.shape[1], "bernoulli"))
    model, guide = model.to(device).eval(), guide.to(device).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    t0 = time.perf_counter()
    estimate = iwae_log_px(model, guide, points, size["samples"])
    synchronize(device)
    out: dict[str, Any] = {"iwae": {"points": len(points), "samples": size["samples"], "seconds": time.perf_counter() - t0,
                                    "mean_log_px": float(estimate.value.mean())}}
    if device.type == "cuda":
        out["iwae"]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    ais_points = ctx["test"][: size["ais_points"]]
    out["ais"] = []
    for budget in (2**24, None):  # a fixed budget, then the device's default (half its free memory on a GPU)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        t0 = time.perf_counter()
        result = ais(model, guide, ais_points, num_chains=size["ais_chains"], num_steps=size["ais_steps"], max_elements=budget)
        synchronize(device)
        entry = {"max_elements": budget or "device default", "points": len(ais_points), "chains": size["ais_chains"],
                 "steps": size["ais_steps"], "seconds": time.perf_counter() - t0, "mean_log_px": float(result.log_px.value.mean())}
        if device.type == "cuda":
            entry["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["ais"].append(entry)
    return out


CHECKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "environment": check_environment, "gaps-twice": check_gaps_twice, "gaps-on-cpu": check_gaps_on_cpu,
    "returned-devices": check_returned_devices, "flow-ais-checkpoint": check_flow_ais_checkpoint, "gmm-sbn": check_gmm_sbn,
    "compare": check_compare, "resume": check_resume, "host-syncs": check_host_syncs, "evaluation": check_evaluation,
}


# ---- the command --------------------------------------------------------------------------------------------------


class ChecksFailed(RuntimeError):
    """Some check failed: the command says which (exit status 2), after writing every result."""


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=DEVICES, default="cuda", help="default: %(default)s")
    p.add_argument("--tiny", action="store_true", help="tiny evaluation sizes (a CPU; the test suite)")
    p.add_argument("--only", default=None, help=f"comma-separated checks to run (default: all of {', '.join(CHECKS)})")
    p.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="folder holding MNIST/raw (default: %(default)s)")
    p.add_argument("--out", default=os.path.join("results", "gpu_check"))
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --out")
    return p


def markdown(record: dict[str, Any]) -> str:
    lines = ["# GPU check", "", f"Device: {record['device']}; {record['passed']} passed, {record['failed']} failed, "
             f"{record['seconds']:.0f} s in all.", "", "| check | result | seconds | figures |", "|---|---|---:|---|"]
    for name, c in record["checks"].items():
        figures = json.dumps(c.get("result", c.get("error", "")), default=str)
        lines.append(f"| {name} | {'passed' if c['passed'] else 'FAILED'} | {c['seconds']:.1f} | {figures[:400]} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict[str, Any]:
    names = list(CHECKS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise ValueError(f"unknown check(s) {unknown} in --only; choose from {', '.join(CHECKS)}")
    device = resolve_device(args.device)
    with OutputFolder(args.out, results=("gpu_check.json", "gpu_check.md"), state=("work",), overwrite=args.overwrite) as folder:
        mnist = load_dataset("mnist", "bernoulli", "static", data_root=args.data_root)
        ctx = {"device": device, "work": os.path.join(args.out, "work"), "size": "tiny" if args.tiny else "full",
               "x": mnist.train[:200].to(device), "test": mnist.test.to(device)}
        from inference.ais import AISOptions

        ctx["tiny_ais"] = AISOptions(num_chains=4, num_steps=3)
        os.makedirs(ctx["work"], exist_ok=True)
        started, checks = time.perf_counter(), {}
        for name in names:
            t0 = time.perf_counter()
            try:
                checks[name] = {"passed": True, "result": CHECKS[name](ctx)}
            except Exception as err:  # a failed check is recorded and the others still run
                checks[name] = {"passed": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
            checks[name]["seconds"] = time.perf_counter() - t0
            print(f"{name}: {'passed' if checks[name]['passed'] else 'FAILED: ' + checks[name]['error']} "
                  f"({checks[name]['seconds']:.1f} s)", file=sys.stderr, flush=True)
        failed = sum(not c["passed"] for c in checks.values())
        record = {"device": str(device), "tiny": args.tiny, "checks": checks, "passed": len(checks) - failed, "failed": failed,
                  "seconds": time.perf_counter() - started}
        table = markdown(record)
        folder.write(table, {"gpu_check.json": record, "gpu_check.md": table})
    if failed:
        raise ChecksFailed(f"{failed} check(s) failed: {', '.join(n for n, c in checks.items() if not c['passed'])}; see {args.out}/gpu_check.md")
    return record


def cli(argv: list[str] | None = None) -> int:
    return run_cli(make_parser().parse_args, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
