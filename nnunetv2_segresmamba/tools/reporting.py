"""What the sweep report and the efficiency benchmark share: markdown tables, number cells,
matplotlib figures written without a screen, and the figure of Dice against training memory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DiceMemoryPoint:
    """One network on the Dice-vs-memory figure: its label, peak training memory (GiB), mean Dice,
    the Dice's standard deviation (None: no error bar) and its group (one colour per group)."""

    label: str
    memory_gib: float
    dice: float
    dice_std: float | None = None
    group: str | None = None


def plot_dice_vs_memory(points: Sequence[DiceMemoryPoint], path: Path, xlabel: str, ylabel: str,
                        title: str) -> Path:
    """Like the paper's Figure 2: mean Dice (± std) against peak training memory, written as a PNG
    at ``path``; a legend names the groups when there are any."""
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    for group in dict.fromkeys(p.group for p in points):
        mine = [p for p in points if p.group == group]
        ax.errorbar([p.memory_gib for p in mine], [p.dice for p in mine], yerr=[p.dice_std or 0.0 for p in mine],
                    fmt="o", capsize=3, label=group)
        for p in mine:
            ax.annotate(p.label, (p.memory_gib, p.dice), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if any(p.group for p in points):
        ax.legend(fontsize=8)
    return save_figure(fig, path)
