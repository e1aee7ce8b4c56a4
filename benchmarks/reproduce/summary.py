"""The reproduction's tables for the README and ``docs/results.md``, generated from result folders, never typed.

``python -m benchmarks.reproduce report DIR [DIR ...]`` prints, from each folder's ``EXPERIMENT.json``:

* the **verdict table**: one row per claim of every experiment, one column per dataset and budget,
  each cell the computed verdicts with their contexts and paired differences; folders of the same
  dataset and budget with different seeds (retrainings) form one column, each claim judged across the
  seeds (:func:`across_seeds`);
* the **provenance** of each folder: the source commits its reports come from, and whether they
  predate this version of the protocol (the per-decoder log p(x), :mod:`benchmarks.reproduce.log_px`)
  or are a smoke run (``--budget tiny``) whose numbers mean nothing;
* each folder's **main table** (experiment 1).

``--write FILE`` replaces the text between ``<!-- reproduce:NAME:begin -->`` and ``<!-- reproduce:NAME:end -->``
in FILE (NAME: ``summary`` for one row of verdict marks per experiment, ``verdicts`` for the full verdict table and
provenance, ``main`` for the main tables); a
test regenerates them from the committed folders and fails when a file differs.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import torch

from .report import VERDICT_MARK

BLOCKS = ("summary", "verdicts", "main")


def load_folder(folder: str, experiments: list[str]) -> dict[str, dict[str, Any]]:
    """``{experiment: record}`` of the reports found in ``folder`` (an experiment's JSON may sit in a subfolder of its name)."""
    found = {}
    for name in experiments:
        paths = sorted(glob.glob(os.path.join(folder, f"{name}.json")) + glob.glob(os.path.join(folder, name, f"{name}.json")))
        if paths:
            with open(paths[0]) as f:
                found[name] = json.load(f)
    if not found:
        raise ValueError(f"no reproduction report (EXPERIMENT.json) in {folder!r}")
    return found


def label(records: dict[str, dict[str, Any]]) -> str:
    budget = next(iter(records.values()))["budget"]
    return f"{budget['dataset']}, {budget['name']} budget"


def _short(claim: dict[str, Any], named: bool = False) -> str:
    d = claim["difference"]
    mark = VERDICT_MARK.get(claim["status"], claim["status"]).split(" ")[0]
    where = f"{claim['context']}: " if claim.get("context") else ""
    where += f"{claim['claim']}: " if named else ""
    return f"{mark} {where}{claim['a']:.3f} vs {claim['b']:.3f} ({d['mean']:+.3f} ± {d['se']:.3f})"


def _claims_by_paper_claim(record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for claim in record.get("claims", []):
        out.setdefault(claim.get("paper_claim", claim["claim"]), []).append(claim)
    return out


def columns(folders: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[dict[str, dict[str, Any]]]]:
    """The folders grouped into columns: one per dataset and budget, each holding its runs (one per seed)."""
    out: dict[str, list[dict[str, dict[str, Any]]]] = {}
    for records in folders.values():
        out.setdefault(label(records), []).append(records)
    for name, runs in out.items():
        seeds = [next(iter(r.values())).get("seed") for r in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"two result folders of {name} have the same seed {seeds}: give each column one run per seed")
    return out


def across_seeds(claims: list[dict[str, Any]]) -> dict[str, Any]:
    """One claim measured in several training runs (seeds): each run's verdict and paired difference, the mean difference
    over the runs with its standard error over them (the spread between retrainings, which a run's own SE does not
    cover), and the verdict across runs: *holds* (or *fails*) when it holds (fails) in every run, *mixed* otherwise."""
    statuses = [c["status"] for c in claims]
    diffs = torch.tensor([c["difference"]["mean"] for c in claims], dtype=torch.float64)
    se = float(diffs.std() / len(diffs) ** 0.5) if len(diffs) > 1 else None
    verdict = statuses[0] if len(set(statuses)) == 1 else "mixed"
    return {"statuses": statuses, "mean": float(diffs.mean()), "se_between_seeds": se, "verdict": verdict}


def _seeds_cell(found: list[list[dict[str, Any]]], named: bool) -> str:
    """The cell of one claim over several runs: ``found[run]`` are that run's claims in the claim's contexts."""
    keyed = [{(c.get("context"), c["claim"]): c for c in run} for run in found]
    keys = list(dict.fromkeys(k for run in keyed for k in run))
    parts = []
    for key in keys:
        per_run = [run[key] for run in keyed if key in run]
        combined = across_seeds(per_run)
        marks = "".join(VERDICT_MARK.get(s, s).split(" ")[0] for s in combined["statuses"])
        held = sum(s == "holds" for s in combined["statuses"])
        where = (f"{key[0]}: " if key[0] else "") + (f"{key[1]}: " if named else "")
        spread = "" if combined["se_between_seeds"] is None else f" ± {combined['se_between_seeds']:.3f}"
        parts.append(f"{marks} {where}{combined['mean']:+.3f}{spread} over {len(per_run)} seeds (holds in {held} of {len(per_run)}; "
                     f"{combined['verdict']})")
    return "<br>".join(parts)


def verdict_table(folders: dict[str, dict[str, dict[str, Any]]], experiments: list[str]) -> str:
    """The verdicts of every claim (rows) in every dataset and budget (columns; several seeds of one are combined)."""
    grouped = columns(folders)
    lines = ["| # | experiment | claim | " + " | ".join(grouped) + " |", "|---|---|---|" + "---|" * len(grouped)]
    for number, name in enumerate(experiments, 1):
        claims: dict[str, None] = {}
        for runs in grouped.values():
            for records in runs:
                if name in records:
                    claims.update(dict.fromkeys(_claims_by_paper_claim(records[name])))
        if not claims:
            cells = ["no verdict (a figure or table only)" if any(name in r for r in runs) else "not run" for runs in grouped.values()]
            lines.append(f"| {number} | `{name}` | — | " + " | ".join(cells) + " |")
            continue
        for paper_claim in claims:
            cells = []
            for runs in grouped.values():
                found = [_claims_by_paper_claim(r[name]).get(paper_claim, []) for r in runs if name in r]
                if not found:
                    cells.append("not run")
                    continue
                contexts = [c.get("context") for c in found[0]]
                repeated = len(set(contexts)) < len(contexts)  # several claims in one context: name each (e.g. its k)
                if len(found) > 1:
                    cells.append(_seeds_cell(found, repeated) or "—")
                else:
                    cells.append("<br>".join(_short(c, repeated) for c in found[0]) if found[0] else "—")
            lines.append(f"| {number} | `{name}` | {paper_claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compact_table(folders: dict[str, dict[str, dict[str, Any]]], experiments: list[str], titles: dict[str, str]) -> str:
    """One row per experiment, one column per dataset and budget: each verdict as its mark, claim by claim (separated
    by a bar), in the order of the full table; several seeds give one mark per seed."""
    grouped = columns(folders)
    lines = ["| # | experiment | " + " | ".join(grouped) + " |", "|---|---|" + "---|" * len(grouped)]
    for number, name in enumerate(experiments, 1):
        cells = []
        for runs in grouped.values():
            present = [r[name] for r in runs if name in r]
            if not present:
                cells.append("not run")
                continue
            per_claim = []
            for paper_claim in _claims_by_paper_claim(present[0]):
                marks = ["".join(VERDICT_MARK.get(c["status"], c["status"]).split(" ")[0] for c in _claims_by_paper_claim(r).get(paper_claim, []))
                         for r in present]
                per_claim.append(" / ".join(marks))
            cells.append(" \\| ".join(per_claim) if per_claim else "(figure)")
        lines.append(f"| {number} | {titles.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance(folder: str, records: dict[str, dict[str, Any]]) -> str:
    """Where a folder's reports come from: commits, the protocol, smoke runs."""
    commits = sorted({r["versions"].get("commit", "unknown") for r in records.values()})
    old = [name for name, r in records.items() if "decoders" not in r and name != "iwae-table"]
    smoke = [name for name, r in records.items() if r.get("smoke_run") or r["budget"]["name"] == "tiny"]
    seeds = sorted({r.get("seed") for r in records.values()}, key=str)
    text = (f"`{folder}` ({label(records)}; seed {', '.join(map(str, seeds))}): {len(records)} report(s) from "
            f"{len(commits)} commit(s) ({', '.join(c[:12] for c in commits)})")
    if old:
        text += (f"; **{len(old)} predate the per-decoder log p(x) and the seeded-AIS fix** ({', '.join(old)}): their verdicts are "
                 "to be read with that caution until they are rerun")
    if smoke:
        text += "; **a smoke run (`--budget tiny`): its numbers mean nothing**"
    return text + "; each of its verdicts is conditional on this one training run per model."


def main_tables(folders: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Experiment 1's table of every folder that has it."""
    from .gaps_by_family import main_table

    parts = []
    for folder, records in folders.items():
        if "gaps-by-family" in records:
            header, rows = main_table(records["gaps-by-family"]["results"])
            parts.append(f"**{label(records)}** (`{folder}`):\n\n" + "\n".join(
                ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]))
    return "\n\n".join(parts)


def render(folders: list[str], experiments: list[str]) -> dict[str, str]:
    """The generated blocks, by name (:data:`BLOCKS`)."""
    loaded = {folder: load_folder(folder, experiments) for folder in folders}
    verdicts = verdict_table(loaded, experiments) + "\n\n" + "\n".join(f"- {provenance(f, r)}" for f, r in loaded.items())
    note = ("Generated by `python -m benchmarks.reproduce report " + " ".join(folders) + "` from the committed JSON; "
            "✅ holds, ❌ fails, 〰 within noise; each cell: context, the two means, and their paired difference ± its standard error "
            "over the points. Where a column combines several seeds (retrainings), a cell gives each seed's verdict, the mean "
            "difference over the seeds ± its standard error over them, and holds (fails) only if it holds (fails) in every seed.")
    titles = {name: r[name]["title"].split(" (")[0].removeprefix("[SMOKE RUN, --budget tiny: the numbers mean nothing] ")
              for r in loaded.values() for name in r}
    compact = ("Generated by `python -m benchmarks.reproduce report " + " ".join(folders) + "`: each claim's verdicts in its contexts "
               "(✅ holds, ❌ fails, 〰 within noise; claims separated by |), in the order of the full table in "
               "[docs/results.md](docs/results.md), which gives each with its numbers.\n\n" + compact_table(loaded, experiments, titles)
               + "\n\n" + "\n".join(f"- {provenance(f, r)}" for f, r in loaded.items()))
    return {"verdicts": note + "\n\n" + verdicts, "main": main_tables(loaded), "summary": compact}


def marker(name: str, end: bool = False) -> str:
    return f"<!-- reproduce:{name}:{'end' if end else 'begin'} -->"


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with every generated block it marks replaced; a file without a pair of markers for a block is left alone there."""
    for name, body in blocks.items():
        pattern = re.compile(re.escape(marker(name)) + r".*?" + re.escape(marker(name, end=True)), re.S)
        replacement = f"{marker(name)}\n{body}\n{marker(name, end=True)}"
        text = pattern.sub(lambda _, r=replacement: r, text)
    return text


def write(paths: list[str], blocks: dict[str, str]) -> list[str]:
    """Replace the marked blocks of each file in ``paths``; the files that changed."""
    from inference.io import atomic_write_text

    changed = []
    for path in paths:
        with open(path) as f:
            text = f.read()
        if not any(marker(name) in text for name in BLOCKS):
            raise ValueError(f"{path!r} marks no generated block: put {marker('verdicts')} ... {marker('verdicts', end=True)} where it goes")
        new = replace_blocks(text, blocks)
        if new != text:
            atomic_write_text(path, new)
            changed.append(path)
    return changed
