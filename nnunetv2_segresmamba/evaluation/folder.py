"""``nnunetv2_segresmamba evaluate``: every case of a prediction folder against its reference,
per foreground label (or nnU-Net region), read as nnU-Net reads them (``dataset.json``'s labels,
regions, ignore label and file ending; the plans' image reader), with the spacing of each
reference image. Writes ``cases.csv`` (columns :data:`CSV_COLUMNS`) and ``summary.json``."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunetv2_segresmamba.evaluation.metrics import BOTH_EMPTY, PRED_EMPTY, REF_EMPTY, binary_metrics

CSV_COLUMNS = ["case", "class", "dice", "hd95_mm", "nsd"]
METRICS = ("dice", "hd95_mm", "nsd")
HIGHER_IS_BETTER = {"dice": True, "hd95_mm": False, "nsd": True}
DEFAULT_NSD_TOLERANCE_MM = 2.0
CASES_FILE, SUMMARY_FILE = "cases.csv", "summary.json"


@dataclass(frozen=True)
class Tolerances:
    """NSD tolerances in mm: ``default`` for every class, ``per_class`` by class name."""

    default: float = DEFAULT_NSD_TOLERANCE_MM
    per_class: Mapping[str, float] = field(default_factory=dict)

    def of(self, name: str) -> float:
        return float(self.per_class.get(name, self.default))

    def require_classes(self, names: Sequence[str]) -> None:
        unknown = sorted(set(self.per_class) - set(names))
        if unknown:
            raise ValueError(f"NSD tolerance for unknown classes {unknown}; the classes are {list(names)}")

    def as_dict(self) -> dict:
        return {"default": self.default, **dict(self.per_class)}


def parse_tolerances(values: Sequence[str] | None, json_file: str | os.PathLike | None = None) -> Tolerances:
    """``--nsd-tolerance-mm 2 liver=3 spleen=1.5`` (a number: the default; NAME=MM: one class),
    after a JSON file of the same ({"default": 2, "liver": 3}) where one is given."""
    default, per_class = DEFAULT_NSD_TOLERANCE_MM, {}
    if json_file:
        loaded = json.loads(Path(json_file).read_text())
        default = float(loaded.pop("default", default))
        per_class.update({k: float(v) for k, v in loaded.items()})
    for value in values or []:
        name, sep, mm = value.rpartition("=")
        try:
            number = float(mm)
        except ValueError:
            raise ValueError(f"NSD tolerance {value!r}: write MM (every class) or CLASS=MM, "
                             "e.g. 2 or liver=3") from None
        if sep:
            per_class[name] = number
        else:
            default = number
    if any(t < 0 for t in [default, *per_class.values()]):
        raise ValueError("NSD tolerances must be >= 0 mm")
    return Tolerances(default, per_class)


@dataclass(frozen=True)
class Dataset:
    """What evaluation takes from ``dataset.json`` and the plans: the classes (name, label or
    region), the ignore label, the file ending and nnU-Net's image reader."""

    classes: tuple[tuple[str, int | tuple[int, ...]], ...]
    ignore_label: int | None
    file_ending: str
    reader: type

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.classes]


def read_dataset(dataset_json: str | os.PathLike, plans_json: str | os.PathLike | None = None,
                 example_file: str | None = None) -> Dataset:
    """The classes of ``dataset_json`` (its regions on a region-based dataset), and the reader of
    the plans (or the one nnU-Net picks for the file ending and ``example_file``)."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    dj = json.loads(Path(dataset_json).read_text())
    manager = LabelManager(dj["labels"], dj.get("regions_class_order"))
    names = {_as_key(v): k for k, v in dj["labels"].items()}
    regions = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    classes = tuple((names.get(_as_key(r), str(r)), tuple(r) if isinstance(r, (list, tuple)) else int(r))
                    for r in regions)
    if plans_json:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        reader = PlansManager(str(plans_json)).image_reader_writer_class
    else:
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

        reader = determine_reader_writer_from_dataset_json(dj, example_file)
    return Dataset(classes, manager.ignore_label, dj["file_ending"], reader)


def _as_key(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def evaluate_case(reference_file: str, prediction_file: str, dataset: Dataset, tolerances: Tolerances) -> list[dict]:
    """One row per class: case, class, dice, hd95_mm, nsd, and ``empty`` (the rule applied, or None)."""
    reader = dataset.reader()
    ref, properties = reader.read_seg(reference_file)
    pred, _ = reader.read_seg(prediction_file)
    ref, pred = ref[0], pred[0]  # (1, *spatial) -> spatial
    if ref.shape != pred.shape:
        raise ValueError(f"{prediction_file}: shape {pred.shape} differs from its reference's {ref.shape}")
    spacing = list(properties["spacing"])  # mm, in the array's axis order
    ref, pred, spacing = as_image_dims(ref, pred, spacing)
    valid = None if dataset.ignore_label is None else ref != dataset.ignore_label
    case = case_id(reference_file, dataset.file_ending)
    rows = []
    for name, label in dataset.classes:
        ref_mask, pred_mask = _mask(ref, label), _mask(pred, label)
        if valid is not None:
            pred_mask &= valid
        m = binary_metrics(ref_mask, pred_mask, spacing, tolerances.of(name))
        rows.append({"case": case, "class": name, "dice": m.dice, "hd95_mm": m.hd95_mm, "nsd": m.nsd,
                     "empty": m.empty})
    return rows


def as_image_dims(ref: np.ndarray, pred: np.ndarray, spacing: list[float]) -> tuple[np.ndarray, np.ndarray, list]:
    """A 2D image as nnU-Net reads it, (1, y, x) with a placeholder spacing (999) on its first
    axis, as the (y, x) image it is: a one-slice volume would make every foreground pixel a
    surface voxel and put the placeholder into the diagonal. 3D cases unchanged."""
    if ref.ndim == 3 and ref.shape[0] == 1:
        return ref[0], pred[0], spacing[1:]
    return ref, pred, spacing


def _mask(seg: np.ndarray, label: int | tuple[int, ...]) -> np.ndarray:
    return np.isin(seg, label) if isinstance(label, tuple) else seg == label


def case_id(path: str | os.PathLike, file_ending: str) -> str:
    """nnU-Net's case identifier: the file name without its ending."""
    name = Path(path).name
    return name[: -len(file_ending)] if name.endswith(file_ending) else name


def case_pairs(reference_dir: str | os.PathLike, prediction_dir: str | os.PathLike, file_ending: str,
               chill: bool = False) -> list[tuple[str, str]]:
    """(reference, prediction) files of the reference folder's cases; ValueError naming the
    missing predictions unless ``chill`` (then only the predicted cases)."""
    refs = sorted(p for p in os.listdir(reference_dir) if p.endswith(file_ending))
    if not refs:
        raise ValueError(f"no {file_ending} files in {reference_dir}")
    missing = [p for p in refs if not os.path.isfile(os.path.join(prediction_dir, p))]
    if missing and not chill:
        raise ValueError(f"{len(missing)} cases of {reference_dir} are not predicted in {prediction_dir}: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (--chill: evaluate the others)")
    return [(os.path.join(reference_dir, p), os.path.join(prediction_dir, p)) for p in refs if p not in missing]


def evaluate_cases(pairs: Sequence[tuple[str, str]], dataset: Dataset, tolerances: Tolerances,
                   num_processes: int = 1) -> list[dict]:
    """:func:`evaluate_case` of every pair, in ``num_processes`` processes; rows in case order."""
    tolerances.require_classes(dataset.names)
    args = [(ref, pred, dataset, tolerances) for ref, pred in pairs]
    if num_processes <= 1 or len(pairs) <= 1:
        per_case = [evaluate_case(*a) for a in args]
    else:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(pairs))) as pool:
            per_case = pool.starmap(evaluate_case, args)
    return [row for rows in per_case for row in rows]


def summarize(rows: Sequence[dict], tolerances: Tolerances, classes: Sequence[str]) -> dict:
    """Per class: cases, mean and median of each metric, and how many cases each empty rule set;
    ``foreground_mean``: the mean of the class means."""
    per_class = {}
    for name in classes:
        mine = [r for r in rows if r["class"] == name]
        per_class[name] = {
            "cases": len(mine), "nsd_tolerance_mm": tolerances.of(name),
            **{f"{m}_mean": statistics.fmean(r[m] for r in mine) if mine else None for m in METRICS},
            **{f"{m}_median": statistics.median(r[m] for r in mine) if mine else None for m in METRICS},
            "both_empty": sum(r["empty"] == BOTH_EMPTY for r in mine),
            "reference_empty": sum(r["empty"] == REF_EMPTY for r in mine),
            "prediction_empty": sum(r["empty"] == PRED_EMPTY for r in mine),
        }
    means = {m: [c[f"{m}_mean"] for c in per_class.values() if c[f"{m}_mean"] is not None] for m in METRICS}
    return {"cases": len({r["case"] for r in rows}), "classes": per_class,
            "foreground_mean": {m: statistics.fmean(v) if v else None for m, v in means.items()},
            "nsd_tolerance_mm": tolerances.as_dict(),
            "empty_rule": "Metrics Reloaded: both empty -> Dice 1, NSD 1, HD95 0 mm; only one empty -> Dice 0, "
                          "NSD 0, HD95 = the image diagonal (mm)"}


def write_cases_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """The per-case CSV: :data:`CSV_COLUMNS`, one row per case and class."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def evaluate_folder(reference_dir: str | os.PathLike, prediction_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    dataset_json: str | os.PathLike | None = None, plans_json: str | os.PathLike | None = None,
                    tolerances: Tolerances = Tolerances(), num_processes: int = 1, chill: bool = False) -> list[Path]:
    """Evaluates ``prediction_dir`` against ``reference_dir`` into ``out_dir`` (``cases.csv``,
    ``summary.json``; refused where they exist). ``dataset_json`` and ``plans_json`` default to
    the ones nnUNetv2_predict copies into its output folder; without plans, nnU-Net picks the
    image reader for the file ending."""
    dataset_json = dataset_json or _required(prediction_dir, "dataset.json", "-djfile")
    if plans_json is None and os.path.isfile(os.path.join(prediction_dir, "plans.json")):
        plans_json = os.path.join(prediction_dir, "plans.json")
    out_dir = Path(out_dir)
    targets = [out_dir / CASES_FILE, out_dir / SUMMARY_FILE]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise ValueError(f"{', '.join(existing)} exists; choose another -o (nothing is overwritten)")
    file_ending = json.loads(Path(dataset_json).read_text())["file_ending"]
    pairs = case_pairs(reference_dir, prediction_dir, file_ending, chill)
    dataset = read_dataset(dataset_json, plans_json, pairs[0][0] if pairs else None)
    rows = evaluate_cases(pairs, dataset, tolerances, num_processes)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_cases_csv(rows, targets[0])
    targets[1].write_text(json.dumps(summarize(rows, tolerances, dataset.names), indent=2))
    return targets


def _required(folder, name: str, option: str) -> str:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise ValueError(f"no {name} in {folder} (nnUNetv2_predict writes one there); pass {option}")
    return path
