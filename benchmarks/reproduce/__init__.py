"""Reproduce *Inference Suboptimality in Variational Autoencoders* and go past it: ``python -m benchmarks.reproduce EXPERIMENT``.

Cremer, Li & Duvenaud (2018), ICML; beyond the paper, semi-amortized inference (Kim et al. 2018),
posterior-collapse remedies (Bowman et al. 2016; Kingma et al. 2016; Higgins et al. 2017) and the
IWAE table (Burda, Grosse & Salakhutdinov 2016); from the paper's reference code, the gaps as the decoder
grows with the encoder fixed (10, ``decoder-sizes``) and q* started from the prior against from the encoder
(11, ``qstar-start``). One module per experiment (:data:`EXPERIMENTS`),
each a function ``run(runner) -> Report`` over a shared :class:`benchmarks.reproduce.runner.Runner`;
each writes ``EXPERIMENT.json`` (every number with its standard error, per-datapoint values, the
budget, the configuration, the versions), ``EXPERIMENT.md`` (the tables and the verdict on each
claim, computed by :func:`inference.claims.judge`) and its PNG figures into ``--out``.

``--budget full`` is the papers' protocol (for a GPU); ``--budget cpu`` a reduced one
(:mod:`benchmarks.reproduce.budget`); ``--budget tiny`` runs everything in seconds (the tests).

Launched by ``torchrun`` (``--nproc-per-node N``, ``--nnodes``), the gap evaluations — where the time of
every experiment but the IWAE table goes — are sharded over the ranks (gloo on CPUs, NCCL on GPUs), each
point's random numbers keyed by (seed, index) (``--streams keyed``, forced there), so the numbers are those
of one process run with ``--streams keyed``. Rank 0 trains the models (the others wait and load them), runs
the other evaluations, and alone writes the results; each rank saves the blocks of points it finishes,
so that ``--resume`` continues an interrupted gap evaluation (in one process or sharded).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from typing import Any

from benchmarks.datasets import DATASETS, DEFAULT_DATA_ROOT
from benchmarks.options import run_cli
from benchmarks.outdir import OutputFolder
from inference.distributed import init_from_environment, world
from inference.io import atomic_write_json, atomic_write_text
from inference.training import DEVICES, resolve_device
from inference.validation import positive_int
from inference.validation import seed as check_seed

from . import summary
from .budget import BUDGETS, budget_for
from .log_px import decoder_section
from .runner import Runner, versions

#: Experiment name -> module of this package, in the paper's order (9: the IWAE table; 10 and 11: the reference code's
#: decoder sizes and where q* starts).
EXPERIMENTS = {
    "gaps-by-family": "gaps_by_family",
    "encoder-capacity": "encoder_capacity",
    "flows-amortization": "flows_amortization",
    "generator-adapts": "generator_adapts",
    "gaps-over-training": "gaps_over_training",
    "posterior-2d": "posterior_2d",
    "semi-amortized": "semi_amortized",
    "collapse": "collapse",
    "iwae-table": "iwae_table",
    "decoder-sizes": "decoder_sizes",
    "qstar-start": "qstar_start",
}


def experiment_module(name: str):
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)} or all")
    return importlib.import_module(f"benchmarks.reproduce.{EXPERIMENTS[name]}")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}, or all (or `report DIR...`: the tables from result folders)")
    p.add_argument("--budget", choices=BUDGETS, default="cpu", help="cpu (default: a reduced protocol), full (the paper's), tiny (seconds)")
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="default: %(default)s")
    p.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="folder holding MNIST/raw (default: %(default)s)")
    p.add_argument("--download", action="store_true", help="let torchvision download MNIST into --data-root")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: results/reproduce/DATASET-BUDGET)")
    p.add_argument("--resume", action="store_true", help="continue unfinished trainings and gap evaluations (finished models and evaluations are always reused)")
    p.add_argument("--overwrite", action="store_true", help="retrain, re-evaluate and replace the experiment's results")
    p.add_argument("--iwae-rows", default=None, help="iwae-table: train and report only these rows, e.g. vae-elbo-1,vae-iwae-5 (default: the budget's)")
    p.add_argument("--checkpoint", default=None, help="iwae-table: re-evaluate this checkpoint's test NLL (e.g. docs/weights/*.pt) instead of training")
    p.add_argument("--test-points", type=int, default=None, help="iwae-table: test points to evaluate (default: the budget's, the whole test split)")
    p.add_argument("--streams", choices=("global", "keyed"), default=None,
                   help="random numbers of the gap evaluations: global (one generator, the default in one process) or keyed by (seed, "
                        "datapoint), which a torchrun launch uses so that its sharded numbers are one process's")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: when attached to a terminal)")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    args = make_parser().parse_args(argv)
    if args.out is None:
        args.out = os.path.join("results", "reproduce", f"{args.dataset}-{args.budget}")
    return args


def result_files(name: str) -> tuple[str, ...]:
    return (f"{name}.json", f"{name}.md", *experiment_module(name).FIGURES)


def main(args: argparse.Namespace) -> dict[str, Any]:
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    for name in names:
        experiment_module(name)  # refuses an unknown name before any work
    check_seed(args.seed, "--seed")
    budget = budget_for(args.budget, args.dataset)
    if (args.checkpoint or args.test_points) and names != ["iwae-table"]:
        raise ValueError("--checkpoint and --test-points belong to the iwae-table experiment")
    if args.test_points is not None:
        budget = dataclasses.replace(budget, iwae_test_points=positive_int(args.test_points, "--test-points"))
    init_from_environment(resolve_device(args.device))  # a torchrun launch: join its group
    size = world()[1]
    if size > 1:
        if "iwae-table" in names:
            raise ValueError("the iwae-table experiment trains through benchmarks.compare, which is not sharded: run it in one process "
                             "(python -m benchmarks.reproduce iwae-table ...; --iwae-rows runs some rows, each in its own process)")
        if args.streams == "global":
            raise ValueError(f"--streams global cannot be sharded over {size} ranks: its numbers would depend on the split; use keyed")
        args.streams = "keyed"
    results = tuple(f for name in names for f in result_files(name))
    out: dict[str, Any] = {}
    with OutputFolder(args.out, results=results, state=("models", "evals"), trains=False, resume=args.resume, overwrite=args.overwrite):
        runner = Runner(args, budget, args.out)
        for name in names:
            out[name] = run_experiment(runner, name)
        if len(names) > 1:  # every decoder's log p(x) now has every experiment's q*: the reports again, from the cached evaluations
            for name in names:
                if any(v for v in out[name].get("decoders", {}).values()):
                    print(f"{name}: the report again, with every experiment's candidates for its decoders' log p(x)", file=sys.stderr)
                    out[name] = run_experiment(runner, name)
    return out


def run_experiment(runner: Runner, name: str) -> dict[str, Any]:
    """Run one experiment and write its JSON, Markdown and figures into the runner's folder."""
    module = experiment_module(name)
    started, trained_before = time.perf_counter(), len(runner.trained_now)
    runner.models_used, runner.compute_seconds, runner.decoders_used, runner.bound_checks = {}, {}, {}, {}
    report = module.run(runner)
    decoder_section(report, runner.decoders_used, list(runner.bound_checks.values()))
    trained = runner.trained_now[trained_before:]
    seconds = time.perf_counter() - started
    b = runner.budget
    compute = sum(runner.compute_seconds.values())
    header = (f"Budget `{b.name}` on `{b.dataset}`, seed {runner.seed}; produced by `python -m benchmarks.reproduce {name} --budget {b.name} "
              f"--dataset {b.dataset}` in {seconds / 60:.1f} min (models trained for it in this run: {', '.join(trained) or 'none, all reused'}; "
              f"the training and evaluations behind it took {compute / 60:.1f} min when they were computed). "
              "Nats per datapoint; ± is the standard error of the mean over datapoints; every verdict is a paired test on the same "
              "points at the level of 3 standard errors (Student-t on n − 1 df), computed from the numbers. Each verdict is "
              "conditional on one training run per model (this seed): its standard error covers the datapoints, not retraining; "
              "`python -m benchmarks.sweep --grid seed=0,1,2 -- reproduce ...` repeats it over seeds.")
    if b.name == "tiny":  # the test suite's budget: every code path in seconds, on models that have not learned
        report.title = f"[SMOKE RUN, --budget tiny: the numbers mean nothing] {report.title}"
        header = ("**A smoke run (`--budget tiny`): models of a few units trained for an epoch or two, evaluated on 4 points with a "
                  "handful of samples. It checks that the code runs; its numbers and verdicts mean nothing.** ") + header
    record = {**report.to_dict(), "smoke_run": b.name == "tiny", "budget": b.to_dict(), "seed": runner.seed, "device": str(runner.device), "seconds": seconds,
              "versions": versions(), "command": " ".join(sys.argv), "models": runner.models_used,
              "compute_seconds": dict(runner.compute_seconds), "world_size": runner.world_size,
              "streams": "keyed" if runner.keyed else "global", "decoders": runner.decoders_used,
              "bound_checks": list(runner.bound_checks.values())}
    if runner.rank != 0:  # rank 0 alone writes
        return record
    markdown = report.markdown(header)
    print(markdown)
    atomic_write_json(os.path.join(runner.out, f"{name}.json"), record)
    atomic_write_text(os.path.join(runner.out, f"{name}.md"), markdown)
    for filename, draw in report.figures.items():
        draw(os.path.join(runner.out, filename))
    print(f"wrote {os.path.join(runner.out, name + '.json')}, .md and {len(report.figures)} figure(s)", file=sys.stderr)
    return record


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reproduce report",
                                description="The verdict table and the main tables, generated from result folders' JSON.")
    p.add_argument("folders", nargs="+", help="result folders (e.g. docs/reproduce/digits-cpu docs/reproduce/mnist-cpu)")
    p.add_argument("--write", nargs="+", default=[], metavar="FILE",
                   help="replace the generated blocks marked in these files (e.g. README.md docs/results.md) instead of printing")
    return p


def report_main(args: argparse.Namespace) -> dict[str, Any]:
    for folder in args.folders:
        if not os.path.isdir(folder):
            raise ValueError(f"no result folder {folder!r}")
    blocks = summary.render(args.folders, list(EXPERIMENTS))
    if not args.write:
        print("\n\n".join(blocks.values()))
        return blocks
    changed = summary.write(args.write, blocks)
    print(f"updated {', '.join(changed)}" if changed else "every file was up to date", file=sys.stderr)
    return blocks


def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        return run_cli(lambda a: report_parser().parse_args(a), report_main, argv[1:])
    return run_cli(parse, main, argv)
