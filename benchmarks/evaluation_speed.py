"""How long the per-case evaluation of the sweep report takes against the prediction it evaluates.

A 14-class case of 256 x 256 x 200 voxels (z, y, x = 200, 256, 256 at 2.0 x 0.8 x 0.8 mm): 14
ellipsoids as the reference, and as the prediction the same organs shifted by one or two voxels
and grown or shrunk by one voxel, written as NIfTI. The evaluation reads both files and computes
Dice, HD95 and NSD of every class (``evaluation.folder.evaluate_cases``), with 1 and 2 processes.

The prediction it is compared with: SegResMamba's forward pass on one 128^3 patch, measured here
on the same machine, times the number of tiles nnU-Net's sliding window (step 0.5) puts on the
case, without test-time mirroring, resampling or export: a lower bound of nnUNetv2_predict's time
per case, for one fold (a 5-fold ensemble takes five of them). The report of a sweep of 5 folds x
100 cases evaluates 100 cross-validation cases (each once, in its fold) and 100 test cases per
trainer, and its trainers predicted at least as many; so the report takes no longer than the
predictions when the evaluation of a case takes no longer than one fold's prediction of it.

    python -m benchmarks.evaluation_speed --out benchmarks/results/cpu-2core/evaluation
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe, new_run_folder
from nnunetv2_segresmamba.tools.reporting import markdown_table, pyplot, save_figure

SHAPE, SPACING, CLASSES, PATCH = (200, 256, 256), (2.0, 0.8, 0.8), 14, (128, 128, 128)


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, prediction) label maps of :data:`SHAPE` with :data:`CLASSES` organs."""
    from scipy.ndimage import binary_dilation, binary_erosion

    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    for label in range(1, CLASSES + 1):
        radii = rng.uniform(8, 30, 3) / np.array(SPACING)  # mm -> voxels
        center = rng.uniform(radii, np.array(SHAPE) - radii)
        organ = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1
        ref[organ] = label
        moved = np.roll(organ, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
        moved = binary_dilation(moved) if rng.random() < 0.5 else binary_erosion(moved)
        pred[moved] = label
    return ref, pred


def write_cases(folder: Path, cases: int) -> tuple[Path, Path, Path]:
    import SimpleITK as sitk

    ref_dir, pred_dir = folder / "ref", folder / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    for i in range(cases):
        for array, target in zip(make_case(i), (ref_dir, pred_dir)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing([float(s) for s in reversed(SPACING)])
            sitk.WriteImage(image, str(target / f"case_{i:03d}.nii.gz"), useCompression=True)
    dataset_json = folder / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, **{f"organ{k}": k for k in range(1, CLASSES + 1)}},
                                        "file_ending": ".nii.gz", "channel_names": {"0": "CT"}, "numTraining": cases}))
    return ref_dir, pred_dir, dataset_json


def evaluation_seconds_per_case(ref_dir: Path, pred_dir: Path, dataset_json: Path, processes: int) -> float:
    from nnunetv2_segresmamba.evaluation.folder import Tolerances, case_pairs, evaluate_cases, read_dataset

    pairs = case_pairs(ref_dir, pred_dir, ".nii.gz")
    dataset = read_dataset(dataset_json, None, pairs[0][0])
    start = time.perf_counter()
    evaluate_cases(pairs, dataset, Tolerances(), processes)
    return (time.perf_counter() - start) / len(pairs)


def prediction_seconds_per_case() -> dict:
    """SegResMamba's forward pass on one :data:`PATCH` (after a warm-up) times nnU-Net's tiles."""
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    from nnunetv2_segresmamba.registry import network

    steps = compute_steps_for_sliding_window(SHAPE, PATCH, 0.5)
    tiles = int(np.prod([len(s) for s in steps]))
    model = network("SegResMamba").build(1, CLASSES + 1, PATCH).eval()
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        model(x[..., :64, :64, :64])  # warm-up (kernels compiled, memory allocated)
        start = time.perf_counter()
        model(x)
        forward = time.perf_counter() - start
    return {"network": "SegResMamba", "patch": list(PATCH), "tiles": tiles, "forward_s": forward,
            "per_case_s": forward * tiles}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=4, help="cases evaluated (default %(default)s)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, help="a new folder for the results (default: a new folder under "
                        "benchmarks/results/runs/)")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new --out (results are never overwritten)")
    command = "python -m benchmarks.evaluation_speed " + shlex.join(sys.argv[1:] if argv is None else argv)
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        ref_dir, pred_dir, dataset_json = write_cases(Path(tmp), args.cases)
        evaluation = {p: evaluation_seconds_per_case(ref_dir, pred_dir, dataset_json, p) for p in args.processes}
    prediction = prediction_seconds_per_case()
    load.append(os.getloadavg()[0])
    results = {"machine": describe(), "command": command, "load_average_1min_start_end": load,
               "shape_zyx": list(SHAPE), "spacing_mm": list(SPACING), "classes": CLASSES, "cases": args.cases,
               "evaluation_s_per_case": evaluation, "prediction": prediction}
    out = args.out or new_run_folder(describe())
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation_speed.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, out / "evaluation_speed.md")
    plot(results, out / "evaluation_speed.png")
    print((out / "evaluation_speed.md").read_text())


def write_markdown(results: dict, path: Path) -> None:
    m, p = results["machine"], results["prediction"]
    rows = [[f"evaluation, {n} process{'es' if int(n) > 1 else ''}", f"{s:.2f}", f"{s / p['per_case_s']:.3f}"]
            for n, s in results["evaluation_s_per_case"].items()]
    rows.append([f"prediction, one fold: {p['network']} {p['tiles']} tiles x {p['forward_s']:.2f} s "
                 f"(patch {'x'.join(map(str, p['patch']))}, no mirroring)", f"{p['per_case_s']:.2f}", "1.000"])
    lines = [f"# Evaluation against prediction, per {'x'.join(map(str, results['shape_zyx']))} case "
             f"({results['classes']} classes)", "",
             f"{m['cpu']}, {m['cores']} cores (os.cpu_count), torch {m['torch']}; load average (1 min) "
             f"{' at the start, '.join(f'{x:.1f}' for x in results['load_average_1min_start_end'])} at the end "
             f"(other work shared the cores). {results['cases']} cases. Command: `{results['command']}`", "",
             *markdown_table(["step", "s per case", "/ prediction"], rows), "",
             "A sweep's report evaluates each case once per trainer and split; the same trainer predicted it "
             "with at least one fold, so the report is faster than the predictions while the ratio is below 1."]
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> Path:
    p = results["prediction"]
    labels = [f"evaluate\n-np {n}" for n in results["evaluation_s_per_case"]] + ["predict\n(1 fold, lower bound)"]
    values = [*results["evaluation_s_per_case"].values(), p["per_case_s"]]
    fig, ax = pyplot().subplots(figsize=(5.5, 3.8))
    ax.bar(labels, values, color=["tab:blue"] * (len(values) - 1) + ["tab:orange"])
    for i, v in enumerate(values):
        ax.annotate(f"{v:.1f} s", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="seconds per case", title=f"{'x'.join(map(str, results['shape_zyx']))}, {results['classes']} "
                                            f"classes, {results['machine']['cores']} CPU cores")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
