"""Is the difference real? The report's per-case part: Dice, HD95 (mm) and NSD of every
cross-validation case (each done fold's ``validation`` folder against nnU-Net's reference files)
and every test case (each trainer's ensemble in ``SWEEP_DIR/test`` against ``labelsTs``), then,
on the cases all compared trainers share, paired statistics against a reference trainer, the
family's control pairs, and the ranking with its bootstrap stability.

A case's score is the mean of its classes' values. A trainer with a missing fold is left out of
the cross-validation statistics (its cases would not match the others'), unless
``allow_incomplete``: then it is compared on the cases it has, and marked. A trainer with a
missing fold has no test-set ensemble; the report says so.

Writes ``cases.csv``, ``paired.csv``, ``ranking.csv``, ``statistics.md`` and the figures
``cases_<metric>.png``, ``forest.png`` and ``rank_stability.png``.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunetv2_segresmamba.evaluation.folder import (
    HIGHER_IS_BETTER,
    METRICS,
    Tolerances,
    case_pairs,
    evaluate_cases,
    read_dataset,
)
from nnunetv2_segresmamba.evaluation.metrics import BOTH_EMPTY, PRED_EMPTY, REF_EMPTY
from nnunetv2_segresmamba.evaluation.stats import BOOTSTRAP_SAMPLES, Paired, case_ranks, compare, rank_stability
from nnunetv2_segresmamba.registry import Member, trainer_label
from nnunetv2_segresmamba.sweeps.jobs import FoldJob, read_plan, runs_dir, trained_member, trainer_and_plans
from nnunetv2_segresmamba.sweeps.predict import predict_jobs, read_test_sets
from nnunetv2_segresmamba.tools.layout import VALIDATION_SUMMARY
from nnunetv2_segresmamba.tools.reporting import markdown_table, pyplot, save_figure

CV, TEST = "cross-validation", "test"
METRIC_NAMES = {"dice": "Dice", "hd95_mm": "HD95 (mm)", "nsd": "NSD"}
STATISTICS_FILE, FOREST_PLOT, RANK_PLOT = "statistics.md", "forest.png", "rank_stability.png"


@dataclass
class Entry:
    """One trainer (and plans) on one split of one dataset and configuration: its per-class rows."""

    dataset: str
    configuration: str
    plans: str
    trainer: str
    split: str
    rows: list[dict] = field(default_factory=list)
    complete: bool = True
    member: Member | None = None  # the family member its trainer recorded training; None outside the family

    @property
    def panel(self) -> tuple[str, str, str]:
        return self.dataset, self.configuration, self.split

    @property
    def label(self) -> str:
        return trainer_label(self.trainer, self.plans)

    def scores(self, metric: str) -> dict[str, float]:
        """{case: the mean over its classes of ``metric``}."""
        by_case: dict[str, list[float]] = {}
        for r in self.rows:
            by_case.setdefault(r["case"], []).append(r[metric])
        return {case: statistics.fmean(values) for case, values in by_case.items()}


@dataclass
class Panel:
    """The statistics of one dataset, configuration and split."""

    key: tuple[str, str, str]
    entries: list[Entry]
    cases: list[str]
    reference: str | None = None
    paired: dict[str, list[Paired]] = field(default_factory=dict)  # metric -> each trainer vs the reference
    controls: dict[str, list[Paired]] = field(default_factory=dict)  # metric -> each network vs its control
    ranks: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # metric -> label -> (mean, first)
    notes: list[str] = field(default_factory=list)

    def scores(self, metric: str) -> dict[str, list[float]]:
        return {e.label: [e.scores(metric)[c] for c in self.cases] for e in self.entries}

    def network(self, label: str) -> str:
        """The family's name of the network that the entry ``label`` trains, with the label where
        another entry of the panel trains the same network (on other plans, or another schedule)."""
        entry = next(e for e in self.entries if e.label == label)
        name = _network(entry)
        shared = sum(_network(e) == name for e in self.entries) > 1
        return f"{name} ({label})" if shared else name


def build_verdict(fold_results: Sequence, sweep_dir: Path, results: Path, out_dir: Path, tolerances: Tolerances,
                  reference: str | None = None, num_processes: int = 1, allow_incomplete: bool = False) -> list[Path]:
    """Evaluates, compares and writes the files of the module docstring into ``out_dir``; returns them.
    ``fold_results``: the report's :class:`~nnunetv2_segresmamba.sweeps.report.FoldResult` of every
    planned fold; ``reference``: a trainer of the sweep as :func:`check_reference` gives it (the
    report checks it before it writes anything)."""
    notes: list[str] = []
    entries = cv_entries(fold_results, tolerances, num_processes, allow_incomplete, notes)
    entries += ensemble_entries([f.job for f in fold_results], sweep_dir, results, tolerances, num_processes, notes)
    planned = planned_trainers(sweep_dir)
    panels = [compare_panel(key, [e for e in entries if e.panel == key], reference, planned)
              for key in dict.fromkeys(e.panel for e in entries)]
    written = [_write_csv(out_dir / "cases.csv", [r for e in entries for r in _case_rows(e)]),
               _write_csv(out_dir / "paired.csv", _paired_rows(panels)),
               _write_csv(out_dir / "ranking.csv", _ranking_rows(panels))]
    figures = [_plot_cases(panels, metric, out_dir / f"cases_{metric}.png") for metric in METRICS]
    figures += [_plot_forest(panels, out_dir / FOREST_PLOT), _plot_rank_stability(panels, out_dir / RANK_PLOT)]
    md = out_dir / STATISTICS_FILE
    md.write_text(markdown(panels, entries, notes, tolerances, [f for f in figures if f is not None]))
    return [*written, md, *(f for f in figures if f is not None)]


def cv_entries(fold_results: Sequence, tolerances: Tolerances, num_processes: int, allow_incomplete: bool,
               notes: list[str]) -> list[Entry]:
    """Every trainer's validation cases of its done folds; a trainer with a missing fold (or a fold
    whose validation files are gone) only with ``allow_incomplete``, marked incomplete."""
    groups: dict[tuple, list] = {}
    for f in fold_results:
        groups.setdefault((f.job.dataset, f.job.configuration, f.job.plans, f.job.trainer), []).append(f)
    entries = []
    for (dataset, configuration, plans, trainer), folds in groups.items():
        entry = Entry(dataset, configuration, plans, trainer, CV, member=trained_member(folds[0].fold_dir.parent))
        for f in folds:
            pairs = _validation_pairs(f.fold_dir) if f.done else None
            if pairs is None:
                entry.complete = False
                why = "validation files missing" if f.done else "not done"
                notes.append(f"{dataset} {configuration} {entry.label} fold {f.job.fold}: {why}")
                continue
            dataset_info = read_dataset(f.fold_dir.parent / "dataset.json", f.fold_dir.parent / "plans.json")
            for row in evaluate_cases(pairs, dataset_info, tolerances, num_processes):
                entry.rows.append({**row, "fold": f.job.fold})
        if entry.rows and (entry.complete or allow_incomplete):
            entries.append(entry)
        elif entry.rows:
            notes.append(f"{dataset} {configuration} {entry.label}: left out of the cross-validation statistics "
                         "(a fold is missing; --allow-incomplete compares it on the cases it has)")
    return entries


def _validation_pairs(fold_dir: Path) -> list[tuple[str, str]] | None:
    """(reference, prediction) of each case in the fold's validation summary; None when a file is gone."""
    summary = json.loads((fold_dir / VALIDATION_SUMMARY).read_text())
    pairs = [(c["reference_file"], str(fold_dir / "validation" / os.path.basename(c["prediction_file"])))
             for c in summary["metric_per_case"]]
    return pairs if pairs and all(os.path.isfile(p) for pair in pairs for p in pair) else None


def ensemble_entries(fold_jobs: list[FoldJob], sweep_dir: Path, results: Path, tolerances: Tolerances,
                 num_processes: int, notes: list[str]) -> list[Entry]:
    """Each test-set ensemble of the sweep against its labels."""
    sets = read_test_sets(sweep_dir)
    if not sets:
        return []
    jobs, missing = predict_jobs(fold_jobs, sweep_dir, results, sets)
    notes.extend(missing)
    entries = []
    for job in jobs:
        out = job.output_dir(sweep_dir)
        if not out.is_dir():
            notes.append(f"{job.dataset} {job.configuration} {job.trainer} ({job.plans}): test set not predicted "
                         "yet; run the sweep again")
            continue
        dataset_info = read_dataset(out / "dataset.json", out / "plans.json")
        pairs = case_pairs(sets[job.dataset]["labels"], out, dataset_info.file_ending)
        folds_dir = runs_dir(results, job.dataset, job.trainer, job.plans, job.configuration)
        entry = Entry(job.dataset, job.configuration, job.plans, job.trainer, TEST, member=trained_member(folds_dir))
        entry.rows = [{**r, "fold": "ensemble " + " ".join(map(str, job.folds))}
                      for r in evaluate_cases(pairs, dataset_info, tolerances, num_processes)]
        entries.append(entry)
    return entries


def planned_trainers(sweep_dir: Path) -> list[str]:
    """The sweep's trainers as ``sweep -tr`` named them (:func:`~nnunetv2_segresmamba.registry.trainer_label`),
    in that order."""
    return list(dict.fromkeys(trainer_label(j.trainer, j.plans) for j in read_plan(sweep_dir)))


def check_reference(sweep_dir: Path, reference: str | None) -> str | None:
    """``--reference`` as the sweep names its trainers (``TRAINER:nnUNetPlans`` is ``TRAINER``), or a
    ValueError listing them: before anything is evaluated or written."""
    if reference is None:
        return None
    label, planned = trainer_label(*trainer_and_plans(reference)), planned_trainers(sweep_dir)
    if label not in planned:
        raise ValueError(f"--reference {reference} is not a trainer of this sweep: {', '.join(planned)}")
    return label


def compare_panel(key: tuple[str, str, str], entries: list[Entry], reference: str | None,
                  planned: Sequence[str]) -> Panel:
    """Paired statistics, controls and ranking of ``entries`` on their shared cases, against
    ``reference``, else the first trainer of ``planned`` (the sweep's order) that the panel has;
    a note says so where that is not the one asked for (or, by default, the sweep's first)."""
    cases = sorted(set.intersection(*(set(e.scores("dice")) for e in entries)))
    panel = Panel(key, entries, cases)
    if len(entries) < 2 or len(cases) < 2:
        panel.notes.append(f"{len(entries)} trainer(s) on {len(cases)} shared case(s): no paired statistics "
                           "(they need two trainers and two cases)")
        return panel
    labels = [e.label for e in entries]
    panel.reference = next(t for t in [reference, *planned, *labels] if t in labels)
    wanted = reference or (planned[0] if planned else panel.reference)
    if wanted != panel.reference:
        panel.notes.append(f"the reference {wanted} is not in this panel; compared with {panel.reference} instead")
    controls = control_pairs(entries)
    for metric in METRICS:
        scores, higher = panel.scores(metric), HIGHER_IS_BETTER[metric]
        panel.paired[metric] = compare([(t, panel.reference) for t in labels if t != panel.reference], scores, higher)
        panel.controls[metric] = compare(controls, scores, higher) if controls else []
        ranks, first = case_ranks(scores, higher), rank_stability(scores, higher)
        panel.ranks[metric] = {t: (float(ranks[t].mean()), first[t]) for t in labels}
    return panel


def control_pairs(entries: list[Entry]) -> list[tuple[str, str]]:
    """(network, its ablation) for each ablation of the family whose network is in ``entries``
    on the same plans: SegResMamba and SegResMamba-NoToM, U-Mamba Bot and its No-Mamba control,
    a network and its recipe swap."""
    networks = {e.label: (e.member, e.plans) for e in entries if e.member is not None}  # outside the family: none
    return [(label, control) for control, (m, plans) in networks.items() if m.ablates
            for label, (n, other_plans) in networks.items() if n.network == m.ablates and other_plans == plans]


def markdown(panels: list[Panel], entries: list[Entry], notes: list[str], tolerances: Tolerances,
             figures: list[Path]) -> str:
    lines = ["# Is the difference real?", "",
             "Per case and class: Dice, HD95 in mm (the larger of the two directed 95th percentiles of the "
             "edge-to-edge distances, MONAI) and NSD (MONAI's normalized surface distance) at "
             f"{_tolerance_text(tolerances)}, from each reference image's spacing. A case's score is the mean over "
             "its classes. Empty masks (Metrics Reloaded): reference and prediction both empty: Dice 1, NSD 1, HD95 0; "
             "only one empty: Dice 0, NSD 0, HD95 the image diagonal; counted below.",
             "",
             "Paired statistics on the cases every compared trainer has: difference trainer minus reference "
             f"(HD95: lower is better), mean with a seeded percentile bootstrap 95% CI ({BOOTSTRAP_SAMPLES} "
             "resamples of the cases), two-sided Wilcoxon signed-rank p (scipy), Holm-corrected across the "
             "comparisons of a table and metric; W/T/L: cases where the trainer is better / equal / worse. "
             "Ranking: rank per case (ties share the mean rank), mean over cases; first: the share of "
             "bootstrap resamples of the cases in which the trainer has the best mean rank."]
    for panel in panels:
        dataset, configuration, split = panel.key
        lines += ["", f"## {dataset}, {configuration}, {split}", "",
                  *_metrics_table([e for e in entries if e.panel == panel.key]), ""]
        lines += [f"Shared cases: {len(panel.cases)}.", *(f"- {n}" for n in panel.notes)]
        if panel.reference:
            lines += ["", f"### Against the reference {panel.reference}", "", *_paired_table(panel.paired)]
            if any(panel.controls.values()):
                lines += ["", "### Controls: what the ablated part buys (network minus its control)", "",
                          *_paired_table(panel.controls)]
            lines += ["", "### Ranking", "", *_ranking_table(panel)]
    lines += ["", "## Not compared", "", *([f"- {n}" for n in notes] or ["Nothing: every planned fold and test "
                                                                            "set was evaluated."])]
    lines += ["", "## Figures", "", *(f"- `{f.name}`: {_figure_caption(f.name)}" for f in figures)]
    return "\n".join(lines) + "\n"


def _tolerance_text(tolerances: Tolerances) -> str:
    extra = ", ".join(f"{k} {v:g} mm" for k, v in tolerances.per_class.items())
    return f"a tolerance of {tolerances.default:g} mm" + (f" ({extra})" if extra else "")


def _metrics_table(entries: list[Entry]) -> list[str]:
    header = ["trainer", "network", "cases", *(f"{METRIC_NAMES[m]} mean (median)" for m in METRICS),
              "both empty / ref. empty / pred. empty"]
    body = []
    for e in entries:
        cells = []
        for m in METRICS:
            values = list(e.scores(m).values())
            cells.append(f"{statistics.fmean(values):.4f} ({statistics.median(values):.4f})")
        counts = [sum(r["empty"] == rule for r in e.rows) for rule in (BOTH_EMPTY, REF_EMPTY, PRED_EMPTY)]
        name = e.label + ("" if e.complete else " (incomplete)")
        body.append([name, _network(e), str(len(e.scores("dice"))), *cells, " / ".join(map(str, counts))])
    return markdown_table(header, body)


def _network(e: Entry) -> str:
    return e.member.network if e.member is not None else e.trainer


def _paired_table(by_metric: dict[str, list[Paired]]) -> list[str]:
    header = ["trainer", "vs", "metric", "mean difference [95% CI]", "Wilcoxon p", "Holm p", "W/T/L"]
    body = [[p.trainer, p.reference, METRIC_NAMES[metric], f"{p.mean_difference:+.4f} [{p.ci_low:+.4f}, "
             f"{p.ci_high:+.4f}]", f"{p.p:.3g}", f"{p.p_holm:.3g}", f"{p.wins}/{p.ties}/{p.losses}"]
            for metric, found in by_metric.items() for p in found]
    return markdown_table(header, body)


def _ranking_table(panel: Panel) -> list[str]:
    header = ["trainer", *(f"{METRIC_NAMES[m]}: mean rank, first" for m in METRICS)]
    order = sorted(panel.ranks["dice"], key=lambda t: panel.ranks["dice"][t][0])
    body = [[t, *(f"{panel.ranks[m][t][0]:.2f}, {panel.ranks[m][t][1]:.0%}" for m in METRICS)] for t in order]
    return markdown_table(header, body)


def _figure_caption(name: str) -> str:
    if name.startswith("cases_"):
        metric = name[len("cases_"):-len(".png")]
        return f"per-case {METRIC_NAMES[metric]} (mean over classes), one box per trainer and panel"
    return {FOREST_PLOT: "paired differences with their bootstrap 95% CIs: against the reference and control "
                         "pairs", RANK_PLOT: "rank stability: how often each trainer ranks first (Dice) over "
                                             "bootstrap resamples of the cases"}[name]


def _case_rows(e: Entry) -> list[dict]:
    return [{"dataset": e.dataset, "configuration": e.configuration, "plans": e.plans, "trainer": e.trainer,
             "split": e.split, "fold": r["fold"], "case": r["case"], "class": r["class"], "dice": r["dice"],
             "hd95_mm": r["hd95_mm"], "nsd": r["nsd"], "empty": r["empty"] or ""} for r in e.rows]


def _paired_rows(panels: list[Panel]) -> list[dict]:
    return [{"dataset": p.key[0], "configuration": p.key[1], "split": p.key[2], "kind": kind, "metric": metric,
             "trainer": x.trainer, "versus": x.reference, "cases": x.cases, "mean_difference": x.mean_difference,
             "ci_low": x.ci_low, "ci_high": x.ci_high, "p": x.p, "p_holm": x.p_holm, "wins": x.wins, "ties": x.ties,
             "losses": x.losses}
            for p in panels for kind, table in (("reference", p.paired), ("control", p.controls))
            for metric, found in table.items() for x in found]


def _ranking_rows(panels: list[Panel]) -> list[dict]:
    return [{"dataset": p.key[0], "configuration": p.key[1], "split": p.key[2], "metric": metric, "trainer": t,
             "mean_rank": mean_rank, "share_first": first, "cases": len(p.cases)}
            for p in panels for metric, ranks in p.ranks.items() for t, (mean_rank, first) in ranks.items()]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def _figure_per_panel(panels: list[Panel], path: Path, height: float) -> tuple:
    """A figure with one axis per panel: (figure, [(axis, panel)]); (None, []) and no stale file at
    ``path`` when there is no panel to draw."""
    if not panels:
        path.unlink(missing_ok=True)
        return None, []
    fig, axes = pyplot().subplots(1, len(panels), figsize=(1 + 3.2 * len(panels), height), squeeze=False)
    return fig, list(zip(axes[0], panels))


def _plot_cases(panels: list[Panel], metric: str, path: Path) -> Path | None:
    """One panel per dataset, configuration and split; one box of per-case scores per trainer."""
    fig, drawn = _figure_per_panel([p for p in panels if p.entries], path, 4.5)
    if fig is None:
        return None
    for ax, panel in drawn:
        values = [list(e.scores(metric).values()) for e in panel.entries]
        ax.boxplot(values)
        for i, v in enumerate(values, start=1):
            ax.scatter([i] * len(v), v, s=12, zorder=3)
        ax.set_xticks(range(1, len(values) + 1), [e.label.replace(":", "\n") for e in panel.entries], rotation=20,
                      ha="right", fontsize=7)
        ax.set(ylabel=f"{METRIC_NAMES[metric]} per case", title=", ".join(panel.key), )
        ax.title.set_fontsize(8)
    return save_figure(fig, path)


def _plot_forest(panels: list[Panel], path: Path) -> Path | None:
    """Each paired difference (against the reference, and control pairs) with its interval, one
    column per metric."""
    rows = [(f"{p.key[2]}, {p.key[1]}: {p.network(x.trainer)} - {p.network(x.reference)}{kind}", metric, x)
            for p in panels for table, kind in ((p.paired, ""), (p.controls, " (control)"))
            for metric, found in table.items() for x in found]
    if not rows:
        path.unlink(missing_ok=True)
        return None
    names = list(dict.fromkeys(r[0] for r in rows))
    fig, axes = pyplot().subplots(1, len(METRICS), figsize=(5 + 3 * len(METRICS), 1.5 + 0.4 * len(names)),
                                  sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        for name, m, x in rows:
            if m == metric:
                y = names.index(name)
                ax.errorbar([x.mean_difference], [y], xerr=[[x.mean_difference - x.ci_low], [x.ci_high -
                            x.mean_difference]], fmt="o", capsize=3, color="tab:blue")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set(xlabel=f"{METRIC_NAMES[metric]} difference")
    axes[0][0].set_yticks(range(len(names)), names, fontsize=7)
    return save_figure(fig, path)


def _plot_rank_stability(panels: list[Panel], path: Path) -> Path | None:
    fig, drawn = _figure_per_panel([p for p in panels if p.ranks], path, 4)
    if fig is None:
        return None
    for ax, panel in drawn:
        labels = list(panel.ranks["dice"])
        ax.bar(range(len(labels)), [panel.ranks["dice"][t][1] for t in labels])
        ax.set_xticks(range(len(labels)), [t.replace(":", "\n") for t in labels], rotation=20, ha="right", fontsize=7)
        ax.set(ylim=(0, 1), ylabel="share of bootstrap resamples ranked first (Dice)", title=", ".join(panel.key))
        ax.title.set_fontsize(8)
    return save_figure(fig, path)
