"""An experiment's report: its numbers (JSON), its tables and computed verdicts (Markdown) and its figures (PNG)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

VERDICT_MARK = {"holds": "✅ holds", "fails": "❌ fails", "within noise": "〰 within noise"}


def stat(s: dict[str, float] | None, digits: int = 3) -> str:
    """``mean ± se`` of a ``{"mean", "se"}`` statistic ("—" for None)."""
    if s is None:
        return "—"
    return f"{s['mean']:.{digits}f} ± {s['se']:.{digits}f}"


def _without_status(claim: dict[str, Any]) -> str:
    """A verdict's text without its leading status (the Markdown shows the status as a mark)."""
    text, prefix = claim["text"], f"{claim['status']}: "
    return text[len(prefix):] if text.startswith(prefix) else text


class Report:
    """What one experiment returns: ``results`` and ``claims`` (:meth:`inference.claims.Verdict.to_dict` records) go to the
    JSON; the Markdown is the title, the claims' verdicts, then the tables and text in the order they were added."""

    def __init__(self, name: str, title: str, results: dict[str, Any], claims: list[dict[str, Any]] | None = None):
        self.name, self.title, self.results = name, title, results
        self.claims: list[dict[str, Any]] = list(claims or [])
        self.blocks: list[str] = []
        self.figures: dict[str, Callable[[str], None]] = {}

    def claim(self, paper_claim: str, verdict: dict[str, Any], context: str = "") -> None:
        """Record the verdict (computed by :func:`inference.claims.judge`) on one of the paper's claims."""
        self.claims.append({**verdict, "paper_claim": paper_claim, "context": context})

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        self.blocks.append("\n".join(lines))

    def text(self, text: str) -> None:
        self.blocks.append(text)

    def figure(self, filename: str, draw: Callable[[str], None], caption: str = "") -> None:
        """A PNG drawn by ``draw(path)`` when the report is written, shown in the Markdown."""
        self.figures[filename] = draw
        self.blocks.append(f"![{caption or filename}]({filename})")

    def markdown(self, header: str) -> str:
        lines = [f"# {self.title}", "", header, ""]
        if self.claims:
            lines += ["## Claims, checked by the numbers", ""]
            for c in self.claims:
                where = f" ({c['context']})" if c.get("context") else ""
                lines.append(f"- **{c.get('paper_claim', c['claim'])}**{where} — {VERDICT_MARK.get(c['status'], c['status'])}: {_without_status(c)}")
            lines.append("")
        lines += ["## Results", ""]
        for block in self.blocks:
            lines += [block, ""]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.name, "title": self.title, "claims": self.claims, "results": self.results}
