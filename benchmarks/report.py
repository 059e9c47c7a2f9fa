"""Tables: one per backend with a target and PASS/MISS per row, and the comparison
with single-beat. Printed as text, or written as Markdown for docs/benchmarks.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Row:
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: no target, or nothing measured
    why: str = ""  # shown under the table when the target is missed

    @property
    def result(self) -> str:
        if self.ok is None:
            return "n/a" if self.value.startswith(("n/a", "not run", "failed")) else "-"
        return "PASS" if self.ok else "MISS"


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    header: tuple[str, ...] = ("metric", "value", "target", "result")
    problems: list[str] = field(default_factory=list)  # see results.problems()

    def add(self, *args: object, **kwargs: object) -> Row:
        row = Row(*args, **kwargs)  # type: ignore[arg-type]
        self.rows.append(row)
        return row

    def cells(self) -> list[tuple[str, ...]]:
        return [(r.metric, r.value, r.target, r.result) for r in self.rows]

    def misses(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]

    def text(self) -> str:
        cells = [self.header, *self.cells()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.header))]
        lines = [self.title, "-" * len(self.title)]
        for n, row in enumerate(cells):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += [f"  MISS {r.metric}: {r.why}" for r in self.misses() if r.why]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += [
            "| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in self.cells()
        ]
        extra = [f"- MISS {r.metric}: {r.why}" for r in self.misses() if r.why]
        extra += [f"- {note}" for note in self.notes]
        return "\n".join([*lines, "", *extra, ""] if extra else [*lines, ""])


class Comparison(Table):
    """Rows of (metric, coordinator, the other tool, ratio, target, result)."""

    def __init__(self, title: str, other: str = "single-beat") -> None:
        super().__init__(
            title, header=("metric", "coordinator", other, "ratio", "target", "result")
        )
        self.pairs: list[tuple[str, str, str, str]] = []

    def compare(
        self,
        metric: str,
        ours: str,
        theirs: str,
        ratio: str,
        target: str = "",
        ok: bool | None = None,
    ) -> None:
        self.rows.append(Row(metric, ours, target, ok))
        self.pairs.append((metric, ours, theirs, ratio))

    def cells(self) -> list[tuple[str, ...]]:
        return [
            (m, ours, theirs, ratio, row.target, row.result)
            for (m, ours, theirs, ratio), row in zip(self.pairs, self.rows, strict=True)
        ]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def secs(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.2f} s"


def duration(seconds: float) -> str:
    """Milliseconds below 2 s, seconds above."""
    return ms(seconds) if seconds < 2 else secs(seconds)


def pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.2f}%"


def ratio(theirs: float, ours: float, bigger_is_worse: bool = True, floor: float = 0.0) -> str:
    """How many times better we are: theirs/ours for costs and times. Values at or
    below `floor` (the measurement's resolution) give no ratio."""
    if min(ours, theirs) <= floor or math.isnan(ours) or math.isnan(theirs):
        return "-"
    factor = theirs / ours if bigger_is_worse else ours / theirs
    return f"{factor:.1f}x better" if factor >= 1 else f"{1 / factor:.1f}x worse"
