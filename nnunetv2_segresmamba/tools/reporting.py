"""What the sweep report and the efficiency benchmark share: markdown tables, number cells and
matplotlib figures written without a screen."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def markdown_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A markdown table as lines: header, separator, one line per row."""
    body = ("| " + " | ".join(row) + " |" for row in rows)
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header), *body]


def fmt(value: float | None, digits: int = 2) -> str:
    """A table cell: ``value`` with ``digits`` decimals, ``-`` when there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def gib(mib: float | None) -> float | None:
    return None if mib is None else mib / 1024


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: plotting is optional work)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Writes ``fig`` as a PNG at ``path`` and closes it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
