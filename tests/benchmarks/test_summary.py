"""The reproduction's tables are generated from the committed JSON: the README and docs/results.md say what the numbers say."""

import json
import os
import subprocess

import pytest
import torch

from benchmarks import reproduce
from benchmarks.reproduce import summary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDERS = ["docs/reproduce/digits-cpu", "docs/reproduce/mnist-cpu"]


def generated():
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return summary.render(FOLDERS, list(reproduce.EXPERIMENTS))
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("path", ["README.md", "docs/results.md"])
def test_the_committed_tables_are_the_ones_the_json_gives(path):
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    assert any(summary.marker(n) in text for n in summary.BLOCKS)
    assert summary.replace_blocks(text, generated()) == text, (
        f"{path} differs from the committed results: run python -m benchmarks.reproduce report {' '.join(FOLDERS)} --write README.md docs/results.md")


def test_a_verdict_is_reported_as_computed_with_its_numbers():
    """MNIST experiment 1, FFG held-out: the README once said 'holds (3.14 vs 1.97)' where the JSON says within noise."""
    with open(os.path.join(ROOT, "docs/reproduce/mnist-cpu/gaps-by-family.json")) as f:
        claim = next(c for c in json.load(f)["claims"] if c["context"] == "FFG-trained, test")
    table = generated()["verdicts"]
    row = next(line for line in table.splitlines() if "`gaps-by-family`" in line)
    mnist = row.split(" | ")[-1]
    mark = {"holds": "✅", "fails": "❌", "within noise": "〰"}[claim["status"]]
    assert f"{mark} FFG-trained, test: {claim['a']:.3f} vs {claim['b']:.3f} ({claim['difference']['mean']:+.3f} ± {claim['difference']['se']:.3f})" in mnist


def test_the_provenance_names_commits_and_flags_reports_of_the_old_protocol_and_smoke_runs(tmp_path):
    records = {"gaps-by-family": {"budget": {"dataset": "digits", "name": "tiny"}, "versions": {"commit": "a" * 40}, "seed": 0,
                                  "smoke_run": True, "decoders": {}},
               "collapse": {"budget": {"dataset": "digits", "name": "tiny"}, "versions": {"commit": "b" * 40}, "seed": 0}}
    text = summary.provenance("x", records)
    assert "2 report(s) from 2 commit(s) (aaaaaaaaaaaa, bbbbbbbbbbbb)" in text
    assert "1 predate the per-decoder log p(x)" in text and "(collapse)" in text and "its numbers mean nothing" in text


def test_a_file_without_markers_is_refused_and_blocks_are_replaced_between_them(tmp_path):
    path = tmp_path / "page.md"
    path.write_text("intro\n")
    with pytest.raises(ValueError, match="marks no generated block"):
        summary.write([str(path)], {"verdicts": "x"})
    path.write_text(f"intro\n{summary.marker('verdicts')}\nold\n{summary.marker('verdicts', end=True)}\nend\n")
    assert summary.write([str(path)], {"verdicts": "new \\1 table", "main": "m"}) == [str(path)]
    assert path.read_text() == f"intro\n{summary.marker('verdicts')}\nnew \\1 table\n{summary.marker('verdicts', end=True)}\nend\n"
    assert summary.write([str(path)], {"verdicts": "new \\1 table"}) == []
    code = reproduce.cli(["report", str(tmp_path / "missing")])
    assert code == 2


def _changed_between(first: str, second: str) -> list[str]:
    out = subprocess.run(["git", "diff", "--name-only", first, second, "--", "inference", "ppl_models", "benchmarks/reproduce"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def test_a_run_of_the_current_protocol_comes_from_commits_that_agree_on_the_estimators_and_experiments():
    """Reports of one folder made under several commits: none of those commits may differ in inference/, ppl_models/ or
    benchmarks/reproduce/ (folders of the old protocol are flagged as such in the generated provenance instead)."""
    for folder in FOLDERS:
        records = summary.load_folder(os.path.join(ROOT, folder), list(reproduce.EXPERIMENTS))
        if any("decoders" not in r for name, r in records.items() if name != "iwae-table"):
            assert "predate the per-decoder log p(x)" in summary.provenance(folder, records)
            continue
        commits = sorted({r["versions"]["commit"] for r in records.values()})
        assert not any(c.endswith("+changes") for c in commits), (folder, commits)
        for other in commits[1:]:
            assert _changed_between(commits[0], other) == [], (folder, commits[0], other)


def _record(seed: int, diffs: list[float], statuses: list[str]) -> dict:
    claims = [{"claim": "amortization gap > approximation gap", "paper_claim": "the amortization gap is the larger part", "context": ctx,
               "status": st, "a": 1.0 + d, "b": 1.0, "difference": {"mean": d, "se": 0.01, "n": 50}}
              for ctx, d, st in zip(("train", "test"), diffs, statuses)]
    return {"experiment": "gaps-by-family", "claims": claims, "budget": {"dataset": "digits", "name": "cpu"}, "seed": seed,
            "versions": {"commit": "c" * 40}, "decoders": {}, "results": {}}


def test_runs_of_several_seeds_form_one_column_judged_across_them(tmp_path):
    folders = []
    for seed, diffs, statuses in ((0, [0.3, 0.1], ["holds", "holds"]), (1, [0.2, -0.1], ["holds", "fails"]), (2, [0.4, 0.05], ["holds", "within noise"])):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        (folder / "gaps-by-family.json").write_text(json.dumps(_record(seed, diffs, statuses)))
        folders.append(str(folder))
    table = summary.verdict_table({f: summary.load_folder(f, ["gaps-by-family"]) for f in folders}, ["gaps-by-family"])
    header, _, row = table.splitlines()
    assert header.count("digits, cpu budget") == 1  # one column for the three seeds
    train, test = row.split(" | ")[-1].rstrip(" |").split("<br>")
    se = float(torch.tensor([0.3, 0.2, 0.4], dtype=torch.float64).std()) / 3**0.5
    assert train == f"✅✅✅ train: +0.300 ± {se:.3f} over 3 seeds (holds in 3 of 3; holds)"
    assert test.startswith("✅❌〰 test: +0.017 ± ") and test.endswith("over 3 seeds (holds in 1 of 3; mixed)")
    assert summary.across_seeds([{"status": "fails", "difference": {"mean": -1.0}}] * 2)["verdict"] == "fails"
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "gaps-by-family.json").write_text(json.dumps(_record(0, [0.1, 0.1], ["holds", "holds"])))
    with pytest.raises(ValueError, match="the same seed"):
        summary.verdict_table({f: summary.load_folder(f, ["gaps-by-family"]) for f in [folders[0], str(twin)]}, ["gaps-by-family"])
