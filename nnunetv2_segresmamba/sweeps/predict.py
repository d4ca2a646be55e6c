"""The test set of a sweep: once every planned fold of a trainer is done, its ensemble of those
folds predicts the dataset's ``imagesTs`` with the stock ``nnUNetv2_predict``, as one more job
on the sweep's executor (here or in the SLURM array).

Predictions go to ``SWEEP_DIR/test/<job>.partial`` (resumed with ``--continue_prediction``) and
are renamed to ``SWEEP_DIR/test/<job>`` when complete: a finished folder is never written again.
A trainer with a missing fold gets no ensemble, and the sweep and its report say so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from nnunetv2_segresmamba.sweeps.jobs import FoldJob, is_done, log_path, run_fold, slurm_job_id, write_record
from nnunetv2_segresmamba.tools.layout import TEST_DIR, TEST_SET_FILE, write_atomically
from nnunetv2_segresmamba.tools.pipeline import describe_error, run_command


@dataclass(frozen=True, order=True)
class PredictJob:
    """``nnUNetv2_predict -i images -d dataset -c configuration -tr trainer -p plans -f folds``."""

    dataset: str
    configuration: str
    trainer: str
    plans: str
    folds: tuple[int, ...]
    images: str  # the test images (imagesTs)

    @property
    def key(self) -> str:
        return (f"{self.dataset}__{self.trainer}__{self.plans}__{self.configuration}__test_folds_"
                f"{'-'.join(map(str, self.folds))}")

    def output_dir(self, sweep_dir: str | os.PathLike) -> Path:
        return Path(sweep_dir, TEST_DIR, self.key)

    def command(self, device: str, out: str | os.PathLike) -> list[str]:
        # on a CPU, one preprocessing and one export process: nnU-Net's 3 each only compete for the cores
        processes = ["-npp", "1", "-nps", "1"] if device == "cpu" else []
        return ["nnUNetv2_predict", "-i", self.images, "-o", str(out), "-d", self.dataset, "-c", self.configuration,
                "-tr", self.trainer, "-p", self.plans, "-f", *map(str, self.folds), "-device", device,
                "--continue_prediction", *processes]


def is_predicted(job: PredictJob, sweep_dir: str | os.PathLike) -> bool:
    return job.output_dir(sweep_dir).is_dir()


def job_is_done(job: FoldJob | PredictJob, sweep_dir: Path, results: str | os.PathLike) -> bool:
    """A fold trained and validated, or an ensemble's predictions complete."""
    return is_predicted(job, sweep_dir) if isinstance(job, PredictJob) else is_done(job.fold_dir(results))


def run_job(job: FoldJob | PredictJob, sweep_dir: Path, device: str, env: dict[str, str] | None = None) -> str:
    """:func:`~nnunetv2_segresmamba.sweeps.jobs.run_fold` or :func:`run_predict`, as ``job`` is."""
    if isinstance(job, PredictJob):
        return run_predict(job, sweep_dir, device, env)
    return run_fold(job, sweep_dir, device, env)


def run_predict(job: PredictJob, sweep_dir: Path, device: str, env: dict[str, str] | None = None) -> str:
    """Predicts the test set into ``<job>.partial``, then renames it; ``"skipped"`` when done."""
    out = job.output_dir(sweep_dir)
    if out.is_dir():
        return "skipped"
    partial = out.with_name(out.name + ".partial")
    log = log_path(sweep_dir, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = job.command(device, partial)
    write_record(sweep_dir, job, state="running", host=socket.gethostname(), pid=os.getpid(),
                 slurm_job_id=slurm_job_id(), started=time.time(), ended=None, error=None, log=str(log))
    try:
        with open(log, "a") as f:
            f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        run_command(command, env, log_path=str(log), quiet=True, append=True)
        os.replace(partial, out)
    except KeyboardInterrupt:  # Ctrl-C reached nnUNetv2_predict too: a rerun continues into the partial folder
        write_record(sweep_dir, job, state="stopped", ended=time.time())
        raise
    except Exception as err:
        write_record(sweep_dir, job, state="failed", ended=time.time(), error=describe_error(err))
        raise
    write_record(sweep_dir, job, state="done", ended=time.time())
    return "done"


def read_test_sets(sweep_dir: Path) -> dict[str, dict[str, str]]:
    """{dataset: {"images": ..., "labels": ...}} recorded by ``sweep --test``; {} without a test set."""
    path = sweep_dir / TEST_SET_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def record_test_sets(sweep_dir: Path, datasets: list[str], raw: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Adds each dataset's ``imagesTs`` and ``labelsTs`` under ``raw`` (nnUNet_raw) to the sweep's
    test sets; ValueError, saying what is missing, where a folder is absent or empty."""
    found = read_test_sets(sweep_dir)
    for dataset in datasets:
        folders = {kind: Path(raw, dataset, f"{kind}Ts") for kind in ("images", "labels")}
        empty = [str(f) for f in folders.values() if not f.is_dir() or not any(f.iterdir())]
        if empty:
            raise ValueError(f"--test: {', '.join(empty)} missing or empty; a test set needs both imagesTs and "
                             "labelsTs in the dataset's raw folder")
        found[dataset] = {kind: str(f) for kind, f in folders.items()}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(sweep_dir / TEST_SET_FILE, json.dumps(found, indent=2))
    return found


def predict_jobs(fold_jobs: list[FoldJob], sweep_dir: Path, results: str | os.PathLike,
                 sets: dict[str, dict[str, str]]) -> tuple[list[PredictJob], list[str]]:
    """One ensemble job per dataset, configuration, trainer and plans with a test set whose
    planned folds are all done; and a line for each whose folds are not (no ensemble)."""
    groups: dict[tuple[str, str, str, str], list[FoldJob]] = {}
    for job in sorted(fold_jobs):
        if job.dataset in sets:
            groups.setdefault((job.dataset, job.configuration, job.trainer, job.plans), []).append(job)
    jobs, notes = [], []
    for (dataset, configuration, trainer, plans), folds in groups.items():
        missing = [j.fold for j in folds if not is_done(j.fold_dir(results))]
        if missing:
            notes.append(f"no test-set ensemble for {dataset} {configuration} {trainer} ({plans}): fold(s) "
                         f"{', '.join(map(str, missing))} not done")
            continue
        jobs.append(PredictJob(dataset, configuration, trainer, plans, tuple(j.fold for j in folds),
                               sets[dataset]["images"]))
    return jobs, notes
