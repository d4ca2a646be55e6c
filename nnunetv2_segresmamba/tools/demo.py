"""The whole stock pipeline on the synthetic dataset: plan -> train -> predict -> evaluate."""

from __future__ import annotations

import os

from nnunetv2_segresmamba.tools.pipeline import Workspace, evaluate_folder, run_command
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset

DEMO_TRAINER = "nnUNetTrainerSegResMamba_smoke"


def run_demo(workdir: str, trainer: str = DEMO_TRAINER, device: str = "cpu",
             spec: SyntheticSpec | None = None, verbose: bool = False) -> dict:
    """Runs the demo in a new ``workdir`` and returns the evaluation summary."""
    spec = spec or SyntheticSpec()
    if os.path.exists(workdir) and os.listdir(workdir):
        raise FileExistsError(f"{workdir} is not empty; the demo never overwrites results. Pass a new --workdir.")
    ws = Workspace(os.path.abspath(workdir))
    env, did, quiet = ws.env, str(spec.dataset_id), not verbose
    raw = make_dataset(ws.path("nnUNet_raw"), spec)
    steps = [
        ("planning and preprocessing",
         ["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "3d_fullres", "-np", "2", "--verify_dataset_integrity"]),
        (f"training fold 0 with {trainer}",
         ["nnUNetv2_train", did, "3d_fullres", "0", "-tr", trainer, "-device", device]),
        ("predicting the held-out cases",
         ["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", os.path.join(ws.root, "predictions"),
          "-d", did, "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", device, "-npp", "1", "-nps", "1"]),
    ]
    print(f"[1/{len(steps) + 2}] wrote the synthetic dataset to {raw}", flush=True)
    for index, (title, args) in enumerate(steps, start=2):
        print(f"[{index}/{len(steps) + 2}] {title}: {' '.join(args)}", flush=True)
        seconds = run_command(args, env, log_path=os.path.join(ws.root, f"step{index}.log"), quiet=quiet)
        print(f"      done in {seconds:.0f} s", flush=True)
    print(f"[{len(steps) + 2}/{len(steps) + 2}] evaluating", flush=True)
    summary = evaluate_folder(os.path.join(raw, "labelsTs"), os.path.join(ws.root, "predictions"),
                              list(range(1, spec.num_classes + 1)), env)
    per_class = {k: v["Dice"] for k, v in summary["mean"].items()}
    print(f"Dice per class: {', '.join(f'{k}: {v:.3f}' for k, v in per_class.items())}")
    print(f"Mean Dice on {spec.num_test} held-out cases: {summary['foreground_mean']['Dice']:.3f}")
    print(f"Results: {ws.path('nnUNet_results')}\nPredictions: {os.path.join(ws.root, 'predictions')}")
    return summary
