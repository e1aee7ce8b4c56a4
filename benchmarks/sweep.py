"""A sweep over a grid of options of one benchmark, aggregated into one table and one figure: ``python -m benchmarks.sweep``.

``python -m benchmarks.sweep --grid seed=0,1,2 --grid encoder-hidden='none;200,200' -- gaps --epochs 30`` runs
``benchmarks.gaps --epochs 30`` once per point of the grid (every combination of the ``--grid`` values,
each passed as ``--KEY VALUE``) into ``OUT/<point>/``, then writes ``sweep.json`` (every point's options
and the numbers read back from its results), ``sweep.md`` (one table) and ``sweep.png`` (one figure).
Values are comma-separated, or ``;``-separated when a value itself holds commas. Any benchmark with
a JSON result can be swept:

* ``gaps`` — each split's log p(x), L[q*], L[q] and both gaps (mean ± SE), and the verdict on the
  amortization-gap claim; the figure shows both gaps per point;
* ``reproduce EXPERIMENT`` — each claim's verdict and paired difference; the figure shows every
  claim's difference ± 3 SE per point (a claim stable across seeds keeps its sign);
* ``compare`` — each run's test log p̂(x); the figure shows them per point.

``--resume`` skips points whose results exist; ``--aggregate`` only reads existing points back.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import re
import sys
from typing import Any

import matplotlib.pyplot as plt

from benchmarks.options import run_cli
from benchmarks.outdir import OutputFolder
from benchmarks.report import save_figure

COMMANDS = ("gaps", "compare", "reproduce")


def parse_grid(entries: list[str]) -> dict[str, list[str]]:
    """``["seed=0,1", "encoder-hidden=none;200,200"]`` -> ``{"seed": ["0", "1"], "encoder-hidden": ["none", "200,200"]}``."""
    grid: dict[str, list[str]] = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not re.fullmatch(r"[a-z0-9-]+", key):
            raise ValueError(f"--grid takes KEY=V1,V2 (a benchmark option without its dashes), got {entry!r}")
        items = [v.strip() for v in values.split(";" if ";" in values else ",") if v.strip()]
        if not items:
            raise ValueError(f"--grid {key} lists no values")
        if key in grid:
            raise ValueError(f"--grid {key} is given twice")
        if key == "out":
            raise ValueError("--grid cannot set --out: each point writes into its own folder under the sweep's --out")
        grid[key] = items
    if not grid:
        raise ValueError("give at least one --grid KEY=V1,V2")
    return grid


def points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def label(point: dict[str, str]) -> str:
    """A folder name for a point: ``seed=0_encoder-hidden=200-200``."""
    return "_".join(f"{k}={re.sub(r'[^A-Za-z0-9.+-]', '-', v)}" for k, v in point.items())


def result_file(command: list[str]) -> str:
    if command[0] == "reproduce":
        if len(command) < 2 or command[1].startswith("-"):
            raise ValueError("reproduce needs its EXPERIMENT: ... -- reproduce gaps-by-family [options]")
        if command[1] == "all":
            raise ValueError("sweep one experiment at a time (reproduce EXPERIMENT), not all")
        return f"{command[1]}.json"
    return {"gaps": "gaps.json", "compare": "compare.json"}[command[0]]


def summarize(command: str, result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one point's result that the table and the figure show."""
    if command == "gaps":
        return {split: {"quantities": {k: {"mean": v["mean"], "se": v["se"]} for k, v in s["quantities"].items()},
                        "claims": [{"status": c["status"], "difference": c["difference"]} for c in s.get("claims", [])]}
                for split, s in result["splits"].items()}
    if command == "compare":
        return {f"{r['objective']} K={r['num_particles']}": r["test_log_px"] for r in result["runs"]}
    return {"claims": [{"claim": c["claim"], "context": c.get("context", ""), "status": c["status"], "difference": c["difference"]}
                       for c in result["claims"]]}


def table(command: str, rows: list[tuple[dict[str, str], dict[str, Any]]]) -> str:
    keys = list(rows[0][0])
    if command == "gaps":
        quantities = ("log_px", "elbo_local", "elbo_amortized", "approximation_gap", "amortization_gap")
        header = [*keys, "split", *quantities, "amortization > approximation"]
        body = [[*p.values(), split, *(f"{s['quantities'][q]['mean']:.3f} ± {s['quantities'][q]['se']:.3f}" for q in quantities),
                 ", ".join(c["status"] for c in s["claims"]) or "—"] for p, summary in rows for split, s in summary.items()]
    elif command == "compare":
        runs = list(rows[0][1])
        header = [*keys, *(f"{r}: test log p̂(x)" for r in runs)]
        body = [[*p.values(), *(f"{s[r]['mean']:.2f} ± {s[r]['se']:.2f}" if r in s else "—" for r in runs)] for p, s in rows]
    else:
        header = [*keys, "claim", "context", "verdict", "paired difference"]
        body = [[*p.values(), c["claim"], c["context"], c["status"], f"{c['difference']['mean']:.3f} ± {c['difference']['se']:.3f}"]
                for p, s in rows for c in s["claims"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in body])


def figure(command: str, rows: list[tuple[dict[str, str], dict[str, Any]]], path: str) -> None:
    labels = [", ".join(f"{k}={v}" for k, v in p.items()) for p, _ in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 3), 4.5))
    xs = range(len(rows))
    if command == "gaps":
        for split, marker in (("train", "o"), ("test", "s")):
            for quantity, color in (("approximation_gap", "C1"), ("amortization_gap", "C0")):
                stats = [s[split]["quantities"][quantity] for _, s in rows if split in s]
                if stats:
                    ax.errorbar(xs, [q["mean"] for q in stats], yerr=[q["se"] for q in stats], fmt=marker + "-", color=color, capsize=3,
                                alpha=1.0 if split == "test" else 0.5, label=f"{quantity.replace('_', ' ')} ({split})")
        ax.set_ylabel("nats")
    elif command == "compare":
        for run in rows[0][1]:
            stats = [s.get(run) for _, s in rows]
            ax.errorbar(xs, [q["mean"] if q else float("nan") for q in stats], yerr=[q["se"] if q else 0 for q in stats], fmt="o-",
                        capsize=3, label=run)
        ax.set_ylabel("test log p̂(x) (nats)")
    else:
        claims = [f"{c['claim']} ({c['context']})" if c["context"] else c["claim"] for c in rows[0][1]["claims"]]
        for j, name in enumerate(claims):
            diffs = [s["claims"][j]["difference"] if j < len(s["claims"]) else None for _, s in rows]
            ax.errorbar([x + 0.05 * j for x in xs], [d["mean"] if d else float("nan") for d in diffs],
                        yerr=[3 * d["se"] if d else 0 for d in diffs], fmt="o", capsize=3, label=name[:70])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("paired difference ± 3 SE (nats)")
    ax.set_xticks(list(xs), labels, rotation=20, ha="right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _continue(command: str, where: str) -> list[str]:
    """How a point's own command continues an interrupted point (only reached with --resume: a fresh sweep has no points)."""
    if not os.path.isdir(where):
        return []
    if command == "gaps" and not os.path.exists(os.path.join(where, "checkpoints", "last.ckpt")):
        return ["--overwrite"]  # interrupted before its first checkpoint: nothing to continue
    return ["--resume"]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0],
                                epilog="everything after -- is the swept command: gaps ..., compare ... or reproduce EXPERIMENT ...")
    p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2 (';' between values that hold commas); repeat for more keys")
    p.add_argument("--out", default=os.path.join("results", "sweep"), help="output folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="skip the points whose results exist")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier sweep in --out")
    p.add_argument("--aggregate", action="store_true", help="only read the points' existing results back into the table and figure")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = make_parser()
    args = parser.parse_args(argv[:cut])  # --help answers here
    if cut == len(argv):
        parser.error("give the swept command after --, e.g. -- gaps --epochs 30")
    args.command = argv[cut + 1 :]
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    if not args.command or args.command[0] not in COMMANDS:
        raise ValueError(f"the swept command must be one of {', '.join(COMMANDS)}, got {' '.join(args.command) or 'nothing'}")
    if any(a == "--out" or a.startswith("--out=") for a in args.command):
        raise ValueError("drop --out from the swept command: each point writes into its own folder under the sweep's --out")
    grid = parse_grid(args.grid)
    filename = result_file(args.command)
    module = importlib.import_module(f"benchmarks.{args.command[0]}")
    rows = []
    with OutputFolder(args.out, results=("sweep.json", "sweep.md", "sweep.png"), state=("points",), resume=args.resume or args.aggregate,
                      overwrite=args.overwrite) as folder:
        for point in points(grid):
            where = os.path.join(args.out, "points", label(point))
            path = os.path.join(where, filename)
            if not (args.aggregate or (args.resume and os.path.exists(path))):
                flags = [x for k, v in point.items() for x in (f"--{k}", v)]
                print(f"sweep point {label(point)}", file=sys.stderr, flush=True)
                argv = [*args.command[1:], *flags, "--out", where] + _continue(args.command[0], where)
                code = module.cli(argv)
                if code != 0:
                    raise RuntimeError(f"the point {label(point)} failed (exit status {code}); the finished points are kept: rerun with --resume")
            if not os.path.exists(path):
                raise FileNotFoundError(f"no {filename} for the point {label(point)} in {where!r}")
            with open(path) as f:
                rows.append((point, summarize(args.command[0], json.load(f))))
        command = " ".join(args.command)
        markdown = f"# Sweep of `{command}`\n\nGrid: " + "; ".join(f"`{k}` ∈ {{{', '.join(v)}}}" for k, v in grid.items()) + "\n\n" + \
            table(args.command[0], rows) + "\n\n![sweep](sweep.png)\n"
        record = {"command": args.command, "grid": grid, "points": [{"options": p, "summary": s} for p, s in rows]}
        folder.write(markdown, {"sweep.json": record, "sweep.md": markdown,
                                "sweep.png": lambda path: figure(args.command[0], rows, path)})
    return record


def cli(argv: list[str] | None = None) -> int:
    return run_cli(parse, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
