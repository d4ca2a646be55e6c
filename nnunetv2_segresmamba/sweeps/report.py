"""The sweep's report: every planned fold, a leaderboard per trainer and two figures, from nnU-Net's
``validation/summary.json`` and our ``run_metrics.json`` in each fold folder.

A trainer's Dice is the mean across folds of nnU-Net's foreground mean Dice on each fold's
validation cases, with the sample standard deviation (ddof=1, left empty for a single fold).
Missing folds are never averaged away: a trainer with a missing fold gets no mean Dice unless
``allow_incomplete`` is set, and then its row says ``complete`` False.

Written to ``out_dir``: ``folds.csv``, ``leaderboard.csv``, ``leaderboard.md``, ``dice_boxplot.png``
and, when peak GPU memory was recorded, ``dice_vs_memory.png`` (like the paper's Figure 2); and the
per-case part, :mod:`~nnunetv2_segresmamba.sweeps.verdict`: ``statistics.md``, its CSVs and figures.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from nnunetv2_segresmamba.evaluation.folder import Tolerances
from nnunetv2_segresmamba.registry import DEFAULT_PLANS
from nnunetv2_segresmamba.sweeps.jobs import FoldJob, is_done, is_trained, read_plan, trained_member
from nnunetv2_segresmamba.sweeps.verdict import STATISTICS_FILE, build_verdict, check_reference
from nnunetv2_segresmamba.tools.layout import PLAN_FILE, REPORT_DIR, RUN_METRICS_FILE, VALIDATION_SUMMARY
from nnunetv2_segresmamba.tools.reporting import (
    DiceMemoryPoint,
    fmt,
    gib,
    markdown_table,
    plot_dice_vs_memory,
    pyplot,
    save_figure,
)

GroupKey = tuple[str, str, str, str]  # dataset, configuration, plans, trainer
BOXPLOT = "dice_boxplot.png"
MEMORY_PLOT = "dice_vs_memory.png"
SUMMARY_COLUMNS = ["epoch_time_s", "peak_gpu_memory_mib", "energy_kwh", "co2_kg", "energy_partial"]


@dataclass(frozen=True)
class FoldResult:
    """One planned fold; ``metrics`` is its ``run_metrics.json`` ({} when absent or not done)."""

    job: FoldJob
    fold_dir: Path
    done: bool
    dice: float | None = None
    class_dice: dict[str, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def energy(self) -> dict | None:
        return self.metrics.get("energy")

    @property
    def energy_partial(self) -> bool | None:
        """True when the energy covers only the last process of a resumed run."""
        return None if self.energy is None else self.metrics.get("first_epoch_this_process", 0) > 0


def build_report(sweep_dir: Path, results: Path, out_dir: Path | None = None,
                 allow_incomplete: bool = False, tolerances: Tolerances | None = None, reference: str | None = None,
                 num_processes: int = 1) -> list[Path]:
    """Writes the report of the sweep in ``sweep_dir`` (default ``sweep_dir/report``) and returns its files.

    ``results`` is ``nnUNet_results``. With ``allow_incomplete``, trainers with missing folds get means
    over the folds present, flagged ``complete`` False; otherwise their Dice columns stay empty.
    ``tolerances`` (NSD), ``reference`` (TRAINER or TRAINER:PLANS) and ``num_processes``: the per-case
    part's (:func:`~nnunetv2_segresmamba.sweeps.verdict.build_verdict`).
    """
    folds = collect(Path(sweep_dir), Path(results))
    reference = check_reference(Path(sweep_dir), reference)
    out_dir = Path(out_dir or Path(sweep_dir) / REPORT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_folds(folds)
    rows = sorted((leaderboard_row(key, members, allow_incomplete) for key, members in groups.items()),
                  key=_rank)
    labels = _labels(folds)
    written = [
        _write_csv(out_dir / "folds.csv", [fold_row(f, labels) for f in folds]),
        _write_csv(out_dir / "leaderboard.csv", rows),
    ]
    figures = {BOXPLOT: _plot_dice_boxplot(groups, out_dir / BOXPLOT),
               MEMORY_PLOT: _plot_dice_vs_memory(rows, out_dir / MEMORY_PLOT)}
    md = out_dir / "leaderboard.md"
    pointer = f"\n## Is the difference real?\n\nPer-case metrics, paired statistics, rankings: `{STATISTICS_FILE}`.\n"
    md.write_text(markdown(sweep_dir, results, folds, rows, figures) + pointer)
    verdict = build_verdict(folds, Path(sweep_dir), Path(results), out_dir, tolerances or Tolerances(), reference,
                            num_processes, allow_incomplete)
    return [*written, md, *(p for p in figures.values() if p is not None), *verdict]


def collect(sweep_dir: Path, results: Path) -> list[FoldResult]:
    """Every job of the sweep's plan with its results where the fold is done."""
    jobs = read_plan(sweep_dir)
    if not jobs:
        raise ValueError(f"no jobs in {sweep_dir / PLAN_FILE}; run `nnunetv2_segresmamba sweep` first")
    return [read_fold(job, results) for job in sorted(jobs)]


def read_fold(job: FoldJob, results: Path) -> FoldResult:
    fold_dir = job.fold_dir(results)
    if not is_done(fold_dir):
        return FoldResult(job, fold_dir, done=False)
    summary = json.loads((fold_dir / VALIDATION_SUMMARY).read_text())
    metrics_path = fold_dir / RUN_METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return FoldResult(job, fold_dir, True, summary["foreground_mean"]["Dice"],
                      {label: m["Dice"] for label, m in summary["mean"].items()}, metrics)


def group_folds(folds: list[FoldResult]) -> dict[GroupKey, list[FoldResult]]:
    groups: dict[GroupKey, list[FoldResult]] = {}
    for f in folds:
        groups.setdefault((f.job.dataset, f.job.configuration, f.job.plans, f.job.trainer), []).append(f)
    return groups


def network_name(folder: Path, trainer: str, plans: str = DEFAULT_PLANS) -> str:
    """The family's name of the network that ``trainer``'s folds in ``folder`` train on ``plans``
    (nnU-Net's trainer on ResEnc M plans: "nnU-Net ResEnc M"), as the trainer recorded it
    (:func:`~nnunetv2_segresmamba.sweeps.jobs.trained_member`), with the plans in brackets where no
    member names them ("SegResMamba (nnUNetResEncUNetLPlans)"); the trainer itself for a trainer
    outside the family."""
    found = trained_member(folder)
    if found is None:
        return trainer
    return found.network if found.plans == plans else f"{found.network} ({plans})"


def fold_row(fold: FoldResult, labels: list[str]) -> dict:
    job, m = fold.job, fold.metrics
    return {
        "dataset": job.dataset, "configuration": job.configuration, "plans": job.plans, "trainer": job.trainer,
        "network": network_name(fold.fold_dir.parent, job.trainer, job.plans), "fold": job.fold,
        "state": "done" if fold.done else "missing",
        "fold_dir": str(fold.fold_dir), "dice": fold.dice,
        **{f"dice_{label}": fold.class_dice.get(label) for label in labels},
        "epochs": m.get("epochs"), "epoch_time_s": m.get("epoch_time_median_s"),
        "peak_gpu_memory_mib": m.get("peak_gpu_memory_mib"),
        "energy_kwh": (fold.energy or {}).get("energy_kwh"), "co2_kg": (fold.energy or {}).get("co2_kg"),
        "energy_partial": fold.energy_partial,
    }


def leaderboard_row(key: GroupKey, folds: list[FoldResult], allow_incomplete: bool) -> dict:
    """One trainer's summary. Epoch time is the median over all epochs of its done folds, memory the
    largest peak, energy and CO2 sums; ``energy_partial`` when the sum misses a fold or a resumed
    run's earlier processes."""
    dataset, configuration, plans, trainer = key
    done = [f for f in folds if f.done]
    missing = [f.job.fold for f in folds if not f.done]
    averaged = done if allow_incomplete or not missing else []
    row = {"dataset": dataset, "configuration": configuration, "plans": plans, "trainer": trainer,
           "network": network_name(folds[0].fold_dir.parent, trainer, plans), "folds_done": len(done),
           "folds_expected": len(folds),
           "missing_folds": " ".join(map(str, missing)), "complete": not missing,
           **_mean_std("dice", [f.dice for f in averaged])}
    for label in _labels(done):
        row.update(_mean_std(f"dice_{label}", [f.class_dice[label] for f in averaged]))
    epoch_times = [t for f in done for t in f.metrics.get("epoch_times_s") or []]
    memory = [f.metrics["peak_gpu_memory_mib"] for f in done if f.metrics.get("peak_gpu_memory_mib") is not None]
    energies = [f.energy for f in done if f.energy is not None]
    row.update({
        "epoch_time_s": statistics.median(epoch_times) if epoch_times else None,
        "peak_gpu_memory_mib": max(memory) if memory else None,
        "energy_kwh": sum(e["energy_kwh"] for e in energies) if energies else None,
        "co2_kg": sum(e["co2_kg"] for e in energies) if energies else None,
        "energy_partial": (len(energies) < len(folds) or any(f.energy_partial for f in done)) if energies else None,
    })
    return row


def _mean_std(prefix: str, values: list[float]) -> dict:
    return {f"{prefix}_mean": statistics.fmean(values) if values else None,
            f"{prefix}_std": statistics.stdev(values) if len(values) > 1 else None}


def _labels(folds: list[FoldResult]) -> list[str]:
    """Labels (or regions) of the done folds, numerically where they are numbers."""
    return sorted({label for f in folds for label in f.class_dice}, key=_label_key)


def _label_key(label: str) -> tuple:
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def _rank(row: dict) -> tuple:
    dice = row["dice_mean"]
    return row["dataset"], row["configuration"], dice is None, -(dice or 0.0), row["trainer"], row["plans"]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    """Columns in order of first appearance, so per-class columns of any row are kept."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    columns = [c for c in columns if c not in SUMMARY_COLUMNS] + [c for c in SUMMARY_COLUMNS if c in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown(sweep_dir: Path, results: Path, folds: list[FoldResult], rows: list[dict],
             figures: dict[str, Path | None]) -> str:
    done = sum(f.done for f in folds)
    lines = [
        "# Sweep leaderboard", "",
        f"Sweep `{sweep_dir}`, results `{results}`: {done}/{len(folds)} planned folds done.", "",
        "Dice: nnU-Net's foreground mean Dice of each fold's validation, as mean ± sample standard deviation "
        "(ddof=1) across folds. Epoch: median wall time over all epochs of the done folds. Memory: the largest "
        "peak GPU memory of the done folds. Energy and CO2: summed over the done folds.",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        same = [r for r in rows if r["dataset"] == dataset]
        if len({r["configuration"] for r in same}) > 1:
            lines += ["", f"## {dataset}: configurations side by side", "", *_configuration_table(same)]
    for panel in dict.fromkeys((r["dataset"], r["configuration"]) for r in rows):  # every plans in one table
        lines += ["", f"## {', '.join(panel)}", "",
                  *_leaderboard_table([r for r in rows if (r["dataset"], r["configuration"]) == panel])]
    lines += ["", "## Missing folds", "", *_missing_lines(folds), "", "## Figures", "",
              *_figure_lines(rows, figures)]
    return "\n".join(lines) + "\n"


def _leaderboard_table(rows: list[dict]) -> list[str]:
    labels = sorted({c[len("dice_"):-len("_mean")] for r in rows for c in r
                     if c.startswith("dice_") and c.endswith("_mean") and c != "dice_mean"}, key=_label_key)
    header = ["trainer", "plans", "network", "folds", "Dice", *(f"Dice {label}" for label in labels), "epoch (s)",
              "peak GPU memory (GiB)", "energy (kWh)", "CO2 (kg)"]
    body = [[r["trainer"], r["plans"], r["network"], _folds_cell(r), _dice_cell(r, "dice"),
             *(_dice_cell(r, f"dice_{label}") for label in labels), fmt(r["epoch_time_s"], 1),
             fmt(gib(r["peak_gpu_memory_mib"]), 2), _energy_cell(r, "energy_kwh"), _energy_cell(r, "co2_kg")]
            for r in rows]
    lines = markdown_table(header, body)
    if any(not r["complete"] and r["dice_mean"] is not None for r in rows):
        lines += ["", "Rows marked (incomplete) average only the folds present; see Missing folds."]
    if any(r["energy_partial"] for r in rows):
        lines += ["", "Energy marked * is partial: a fold is missing or did not record energy, or a fold was "
                      "resumed and its energy covers only the last process."]
    return lines


def _configuration_table(rows: list[dict]) -> list[str]:
    """One row per trainer and plans, one Dice column per configuration (``-`` where it was not
    planned), in the order the configurations first appear."""
    configurations = list(dict.fromkeys(r["configuration"] for r in rows))
    by_trainer: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        by_trainer.setdefault((r["trainer"], r["plans"]), {})[r["configuration"]] = r
    header = ["trainer", "plans", "network", *(f"Dice {c}" for c in configurations)]
    body = [[trainer, plans, next(iter(cells.values()))["network"],
             *(_dice_cell(cells[c], "dice") if c in cells else "-" for c in configurations)]
            for (trainer, plans), cells in by_trainer.items()]
    return markdown_table(header, body)


def _folds_cell(row: dict, unit: str = "") -> str:
    cell = f"{row['folds_done']}/{row['folds_expected']}{unit}"
    return cell if row["complete"] else f"{cell}, missing {', '.join(row['missing_folds'].split())}"


def _dice_cell(row: dict, prefix: str) -> str:
    mean, std = row.get(f"{prefix}_mean"), row.get(f"{prefix}_std")
    if mean is None:
        if prefix == "dice" and not row["complete"]:
            return f"incomplete: {_folds_cell(row, ' folds')}"
        return "-"
    cell = f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"
    return cell if row["complete"] else f"{cell} (incomplete)"


def _energy_cell(row: dict, key: str) -> str:
    return fmt(row[key], 4) + ("*" if row["energy_partial"] else "")


def _missing_lines(folds: list[FoldResult]) -> list[str]:
    missing = [f for f in folds if not f.done]
    if not missing:
        return ["None: every planned fold is done."]
    return [f"- {f.job.dataset} {f.job.configuration} {f.job.trainer} ({f.job.plans}) fold {f.job.fold} "
            f"({'trained, not validated' if is_trained(f.fold_dir) else 'not trained'}): `{f.fold_dir}`"
            for f in missing]


def _figure_lines(rows: list[dict], figures: dict[str, Path | None]) -> list[str]:
    lines = [f"- `{BOXPLOT}`: Dice per fold, one box per trainer." if figures[BOXPLOT]
             else f"- `{BOXPLOT}` skipped: no fold is done yet."]
    if figures[MEMORY_PLOT]:
        return [*lines, f"- `{MEMORY_PLOT}`: mean Dice against peak GPU memory in training (paper Figure 2)."]
    reason = ("no trainer has both a mean Dice and a recorded peak GPU memory" if
              any(r["peak_gpu_memory_mib"] is not None for r in rows) else
              "no fold recorded peak GPU memory (trained on CPU, or without run_metrics.json)")
    return [*lines, f"- `{MEMORY_PLOT}` skipped: {reason}."]


def _plot_dice_boxplot(groups: dict[GroupKey, list[FoldResult]], path: Path) -> Path | None:
    """One panel per dataset and configuration, one box per trainer (and its plans, where not the
    default) with its folds as dots."""
    panels: dict[tuple[str, str], dict[str, list[FoldResult]]] = {}
    for (dataset, configuration, plans, trainer), folds in groups.items():
        if any(f.done for f in folds):
            label = trainer if plans == DEFAULT_PLANS else f"{trainer}\n{plans}"
            panels.setdefault((dataset, configuration), {})[label] = folds
    if not panels:
        path.unlink(missing_ok=True)
        return None
    fig, axes = pyplot().subplots(1, len(panels), figsize=(1 + 2.5 * sum(map(len, panels.values())), 5), squeeze=False)
    for ax, (panel, trainers) in zip(axes[0], panels.items()):
        values = [[f.dice for f in folds if f.done] for folds in trainers.values()]
        ax.boxplot(values)
        for i, dice in enumerate(values, start=1):
            ax.scatter([i] * len(dice), dice, s=14, zorder=3)
        ax.set_xticks(range(1, len(values) + 1), [f"{t}\n{len(v)}/{len(trainers[t])} folds"
                                                  for t, v in zip(trainers, values)], rotation=20, ha="right")
        ax.set(ylabel="foreground mean Dice (validation)", title=", ".join(panel))
    return save_figure(fig, path)


def _plot_dice_vs_memory(rows: list[dict], path: Path) -> Path | None:
    """Mean Dice (± std) of each trainer against its peak GPU memory, one colour per dataset and
    configuration; None (and no file) when no trainer has both."""
    points = [DiceMemoryPoint(r["network"] + ("" if r["complete"] else " (incomplete)"),
                              gib(r["peak_gpu_memory_mib"]), r["dice_mean"], r["dice_std"],
                              f"{r['dataset']}, {r['configuration']}")
              for r in rows if r["peak_gpu_memory_mib"] is not None and r["dice_mean"] is not None]
    if not points:
        path.unlink(missing_ok=True)
        return None
    return plot_dice_vs_memory(points, path, xlabel="peak GPU memory in training (GiB)",
                               ylabel="mean Dice across folds", title="Dice vs training memory")

