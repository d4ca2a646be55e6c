"""The whole stock pipeline on the synthetic dataset: plan -> train -> predict -> evaluate."""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Callable

from nnunetv2_segresmamba.tools.pipeline import NNUNET_DIRS, Workspace, evaluate_folder, run_command
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset

DEMO_TRAINER = "nnUNetTrainerSegResMamba_demo"
NEXT_STEPS = """Next, on your own data (nnU-Net's raw format, in $nnUNet_raw/DatasetXXX_Name):
  nnUNetv2_plan_and_preprocess -d XXX -c 3d_fullres --verify_dataset_integrity
  nnUNetv2_train XXX 3d_fullres 0 -tr nnUNetTrainerSegResMamba   # then folds 1 to 4
  nnUNetv2_predict -i IMAGES -o OUT -d XXX -c 3d_fullres -f 0 -tr nnUNetTrainerSegResMamba
  nnunetv2_segresmamba sweep -d XXX --sweep-dir SWEEP --executor slurm   # 5 folds x the comparison family"""


class EpochProgress:
    """Turns the log of ``nnUNetv2_train``, fed line by line, into one line per finished epoch:
    epoch, losses, pseudo-Dice per class, and the training time left at the mean epoch time."""

    FIELD = re.compile(r": (train_loss|val_loss|Pseudo dice|Epoch time:) (.*?)\s*$")
    EPOCH = re.compile(r": Epoch (\d+)\s*$")
    NUMBER = re.compile(r"(?<![\w.])(-?\d+\.\d+(?:e-?\d+)?|nan)")

    def __init__(self, num_epochs: int | None, write: Callable[[str], None] = print):
        self.num_epochs, self.write = num_epochs, write
        self.epoch, self.fields, self.epoch_seconds = 0, {}, []

    def __call__(self, line: str) -> None:
        if epoch := self.EPOCH.search(line):
            self.epoch, self.fields = int(epoch.group(1)), {}
        elif field := self.FIELD.search(line):
            self.fields[field.group(1)] = self.NUMBER.findall(field.group(2))
            if field.group(1) == "Epoch time:" and self.fields[field.group(1)]:
                self.epoch_seconds.append(float(self.fields["Epoch time:"][0]))
                self.write(self.summary())

    def summary(self) -> str:
        """The line of the epoch that has just ended."""
        done = self.epoch + 1
        text = f"      epoch {done}" + (f"/{self.num_epochs}" if self.num_epochs else "")
        for key, name in (("train_loss", "train loss"), ("val_loss", "validation loss")):
            if self.fields.get(key):
                text += f", {name} {float(self.fields[key][0]):.3f}"
        if self.fields.get("Pseudo dice"):
            text += ", pseudo-Dice per class " + " ".join(f"{float(d):.2f}" for d in self.fields["Pseudo dice"])
        text += f", {self.epoch_seconds[-1]:.0f} s"
        if self.num_epochs:
            left = (self.num_epochs - done) * sum(self.epoch_seconds) / len(self.epoch_seconds)
            text += f"; about {left:.0f} s of training left" if left else "; final validation next"
        return text


def demo_workspace(workdir: str) -> Workspace:
    """The demo's three nnU-Net folders under ``workdir``, made absolute."""
    return Workspace(os.path.abspath(workdir))


def keep_working(ws: Workspace, spec: SyntheticSpec, trainer: str, device: str) -> str:
    """How to go on with the demo's data in a new shell: the three ``export nnUNet_*=...`` lines
    for ``ws`` (quoted for a POSIX shell), then nnU-Net commands on the demo's dataset."""
    quote = shlex.quote
    device_arg = "" if device == "cuda" else f" -device {device}"
    images = os.path.join(ws.path("nnUNet_raw"), spec.folder_name, "imagesTs")
    lines = [f"export {name}={quote(ws.path(name))}" for name in NNUNET_DIRS] + [
        f"nnUNetv2_train {spec.dataset_id} 3d_fullres 1 -tr {trainer}{device_arg}   # another fold (1 to 4)",
        f"nnUNetv2_predict -i {quote(images)} -o {quote(os.path.join(ws.root, 'predictions_new'))} "
        f"-d {spec.dataset_id} -c 3d_fullres -f 0 -tr {trainer}{device_arg}",
    ]
    return "To keep working on the demo's data, in a new shell:\n" + "\n".join(f"  {line}" for line in lines)


def num_epochs_of(trainer: str) -> int | None:
    """The epochs ``trainer`` runs, for a trainer of this package; None for others."""
    from nnunetv2_segresmamba import trainers

    return getattr(getattr(trainers, trainer, None), "comparison_num_epochs", None)


def run_demo(workdir: str, trainer: str = DEMO_TRAINER, device: str = "cpu",
             spec: SyntheticSpec | None = None, verbose: bool = False) -> dict:
    """Runs the demo in a new ``workdir`` and returns the evaluation summary."""
    spec = spec or SyntheticSpec()
    if os.path.exists(workdir) and os.listdir(workdir):
        raise FileExistsError(f"{workdir} is not empty; the demo never overwrites results. Pass a new --workdir.")
    ws = demo_workspace(workdir)
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
    start = time.perf_counter()
    for index, (title, args) in enumerate(steps, start=2):
        print(f"[{index}/{len(steps) + 2}] {title}: {' '.join(args)}", flush=True)
        progress = EpochProgress(num_epochs_of(trainer), _print_flush) if args[0] == "nnUNetv2_train" else None
        seconds = run_command(args, env, log_path=os.path.join(ws.root, f"step{index}.log"), quiet=quiet,
                              on_line=None if verbose else progress)
        print(f"      done in {seconds:.0f} s", flush=True)
    print(f"[{len(steps) + 2}/{len(steps) + 2}] evaluating", flush=True)
    summary = evaluate_folder(os.path.join(raw, "labelsTs"), os.path.join(ws.root, "predictions"),
                              list(range(1, spec.num_classes + 1)), env)
    per_class = {k: v["Dice"] for k, v in summary["mean"].items()}
    print(f"Dice per class: {', '.join(f'{k}: {v:.3f}' for k, v in per_class.items())}")
    print(f"Mean Dice on {spec.num_test} held-out cases: {summary['foreground_mean']['Dice']:.3f}")
    print(f"Results: {ws.path('nnUNet_results')}\nPredictions: {os.path.join(ws.root, 'predictions')}")
    print(f"The demo took {time.perf_counter() - start:.0f} s.\n\n{keep_working(ws, spec, trainer, device)}"
          f"\n\n{NEXT_STEPS}", flush=True)
    return summary


def _print_flush(text: str) -> None:
    print(text, flush=True)
