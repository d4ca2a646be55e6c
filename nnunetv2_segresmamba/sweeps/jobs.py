"""One sweep job is one fold of one trainer: its nnU-Net folder, its state on disk, and how to
run it with the stock ``nnUNetv2_train`` so that a rerun resumes and never redoes or
overwrites a finished fold.

The sweep folder holds ``plan.json`` (every job of the sweep), ``logs/<job>.log`` (the
output of each attempt, appended) and ``records/<job>.json`` (the last attempt: state,
host, process and SLURM ids, exit code); :mod:`nnunetv2_segresmamba.tools.layout` names them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

from nnunetv2_segresmamba.registry import (
    DEFAULT_PLANS,
    PLANS_SEPARATOR,
    RESENC_PRESETS,
    Member,
    network,
    resenc_planner,
    resenc_plans,
)
from nnunetv2_segresmamba.sweeps.child import Child, Interrupted, run_child, stopped
from nnunetv2_segresmamba.tools.layout import (
    CHECKPOINT_FINAL,
    LOGS_DIR,
    PLAN_FILE,
    RECORDS_DIR,
    VALIDATION_SUMMARY,
    recorded_network,
    write_atomically,
)
from nnunetv2_segresmamba.tools.pipeline import describe_error, failure_message


def runs_dir(results: str | os.PathLike, dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    """nnU-Net's folder of a trainer's folds: ``<results>/<dataset>/<trainer>__<plans>__<configuration>``."""
    return Path(results, dataset, f"{trainer}__{plans}__{configuration}")


def trained_member(folder: str | os.PathLike) -> Member | None:
    """The family member whose network the folds in ``folder`` (:func:`runs_dir`) train, as
    their trainer recorded it (each trainer class names its member; ``tools.layout.recorded_network``);
    None for a trainer outside the family, or before any fold started."""
    name = recorded_network(folder)
    try:
        return network(name) if name else None
    except KeyError:  # a network no longer in the registry
        return None


@dataclass(frozen=True, order=True)
class FoldJob:
    """``nnUNetv2_train dataset configuration fold -tr trainer -p plans``."""

    dataset: str  # nnU-Net's folder name, e.g. Dataset991_E2E
    configuration: str
    trainer: str
    fold: int
    plans: str = DEFAULT_PLANS

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.trainer}__{self.plans}__{self.configuration}__fold_{self.fold}"

    def fold_dir(self, results: str | os.PathLike) -> Path:
        """nnU-Net's output folder of this fold under ``nnUNet_results``."""
        return runs_dir(results, self.dataset, self.trainer, self.plans, self.configuration) / f"fold_{self.fold}"

    def command(self, device: str, *flags: str) -> list[str]:
        """``nnUNetv2_train`` of this fold on ``device``, with ``flags`` at the end."""
        return ["nnUNetv2_train", self.dataset, self.configuration, str(self.fold), "-tr", self.trainer,
                "-p", self.plans, "-device", device, *flags]

    def train_command(self, device: str) -> list[str]:
        """Training with ``--c`` (nnU-Net starts fresh when there is no checkpoint yet) and ``--npz``,
        so ``nnUNetv2_find_best_configuration`` can ensemble afterwards."""
        return self.command(device, "--npz", "--c")

    def validate_command(self, device: str) -> list[str]:
        """Validation only (``--val --npz``) of a trained fold; ``--c`` would save checkpoint_final again."""
        return self.command(device, "--npz", "--val")


def trainer_and_plans(spec: str, default_plans: str = DEFAULT_PLANS) -> tuple[str, str]:
    """``TRAINER`` or ``TRAINER:PLANS`` -> (trainer, plans), ``default_plans`` where none is named."""
    trainer, _, plans = spec.partition(PLANS_SEPARATOR)
    if not trainer or (PLANS_SEPARATOR in spec and not plans) or PLANS_SEPARATOR in plans:
        raise ValueError(f"trainer {spec!r}: write TRAINER or TRAINER{PLANS_SEPARATOR}PLANS, e.g. "
                         f"nnUNetTrainerComparisonNnUNet{PLANS_SEPARATOR}nnUNetResEncUNetMPlans")
    return trainer, plans or default_plans


def expand(datasets: list[str], configurations: list[str], trainers: list[str], folds: list[int],
           plans: str = DEFAULT_PLANS) -> list[FoldJob]:
    """datasets x configurations x trainers x folds; dataset ids become nnU-Net's folder names. A
    trainer given as ``TRAINER:PLANS`` trains on those plans, the others on ``plans``."""
    names = [dataset_name(d) for d in datasets]
    pairs = list(dict.fromkeys(trainer_and_plans(t, plans) for t in trainers))
    return [FoldJob(name, configuration, trainer, fold, plans=trainer_plans)
            for name, configuration, (trainer, trainer_plans), fold in product(names, configurations, pairs, folds)]


def require_plans(jobs: list[FoldJob], preprocessed: str | os.PathLike) -> None:
    """ValueError, saying how to plan them, unless every job's plans exist in ``preprocessed``
    (``nnUNet_preprocessed``). Whether their data is preprocessed, nnUNetv2_train says."""
    missing = sorted({(j.dataset, j.plans) for j in jobs
                      if not Path(preprocessed, j.dataset, f"{j.plans}.json").exists()})
    if missing:
        advice = "; ".join(f"{dataset}: {plans} ({planning_command(dataset, plans)})" for dataset, plans in missing)
        raise ValueError(f"plans not found in nnUNet_preprocessed: {advice}")


def planning_command(dataset: str, plans: str) -> str:
    """How nnU-Net makes ``plans`` for ``dataset`` (its folder name): its ResEnc presets have
    planners of their own."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    dataset_id = convert_dataset_name_to_id(dataset)  # nnU-Net's -d takes the id
    for preset in RESENC_PRESETS:
        if plans == resenc_plans(preset):
            return (f"nnUNetv2_plan_experiment -d {dataset_id} -pl {resenc_planner(preset)}; they use the default "
                    f"plans' preprocessed 2d and 3d_fullres data (nnUNetv2_preprocess -d {dataset_id} -c 3d_fullres "
                    "if that is not done yet)")
    return f"nnUNetv2_plan_and_preprocess -d {dataset_id}, or the planner that writes {plans}"


def dataset_name(dataset: str) -> str:
    """``991`` or ``Dataset991_E2E`` -> ``Dataset991_E2E``, looked up as nnU-Net does."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(int(dataset) if dataset.isdigit() else dataset)
    except RuntimeError as err:
        raise ValueError(f"dataset {dataset!r} not found in nnUNet_raw, nnUNet_preprocessed or nnUNet_results; "
                         f"run nnUNetv2_plan_and_preprocess -d {dataset} first") from err


def write_plan(sweep_dir: Path, jobs: list[FoldJob]) -> list[FoldJob]:
    """Adds ``jobs`` to the sweep's plan and returns the whole plan: earlier jobs first, then the new
    ones in their order (the first trainer of the first ``sweep`` is the report's default reference)."""
    merged = list(dict.fromkeys([*read_plan(sweep_dir), *jobs]))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(sweep_dir / PLAN_FILE, json.dumps([asdict(j) for j in merged], indent=2))
    return merged


def read_plan(sweep_dir: Path) -> list[FoldJob]:
    path = sweep_dir / PLAN_FILE
    return [FoldJob(**j) for j in json.loads(path.read_text())] if path.exists() else []


def is_trained(fold_dir: Path) -> bool:
    return (fold_dir / CHECKPOINT_FINAL).exists()


def is_done(fold_dir: Path) -> bool:
    """Trained and validated: what the report and find_best_configuration need."""
    return is_trained(fold_dir) and (fold_dir / VALIDATION_SUMMARY).exists()


def log_path(sweep_dir: Path, job: FoldJob) -> Path:
    return sweep_dir / LOGS_DIR / f"{job.key}.log"


def record_path(sweep_dir: Path, job: FoldJob) -> Path:
    return sweep_dir / RECORDS_DIR / f"{job.key}.json"


def read_record(sweep_dir: Path, job: FoldJob) -> dict | None:
    path = record_path(sweep_dir, job)
    return json.loads(path.read_text()) if path.exists() else None


def write_record(sweep_dir: Path, job: FoldJob, **fields) -> None:
    """Updates the job's record with ``fields``."""
    path = record_path(sweep_dir, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**(read_record(sweep_dir, job) or {}), **fields}
    write_atomically(path, json.dumps(record, indent=2))  # status never reads half a record


def run_fold(job: FoldJob, sweep_dir: Path, device: str, env: dict[str, str] | None = None) -> str:
    """Runs one job to its end and returns ``"skipped"`` (already done), ``"done"`` or
    ``"stopped"`` (the trainer stopped gracefully, :mod:`.child`: a rerun resumes it).

    A finished fold is never trained again: a trained but unvalidated fold only gets
    ``--val --npz``; anything else resumes from its latest checkpoint. A failure is written to
    the job's record and raised (nnU-Net's: a RuntimeError with the log's tail).
    """
    results = (env or {}).get("nnUNet_results") or os.environ["nnUNet_results"]
    fold_dir = job.fold_dir(results)
    if is_done(fold_dir):
        return "skipped"
    command = job.validate_command(device) if is_trained(fold_dir) else job.train_command(device)
    log = log_path(sweep_dir, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    write_record(sweep_dir, job, state="running", host=socket.gethostname(), pid=os.getpid(),
                  slurm_job_id=slurm_job_id(), started=time.time(), ended=None, error=None, log=str(log))
    try:
        with open(log, "a") as f:
            f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        child = run_child(command, env, str(log))
    except Interrupted as interrupted:  # Ctrl-C: run_child stopped the trainer gracefully (or killed it)
        record_stop(sweep_dir, job, interrupted.child)
        raise
    except Exception as err:  # any failure, so that no record is left "running"
        write_record(sweep_dir, job, state="failed", ended=time.time(), error=describe_error(err))
        raise
    if stopped(child):
        record_stop(sweep_dir, job, child)
        return "stopped"
    record_attempt(sweep_dir, job, child)
    if child.process.returncode:
        error = RuntimeError(failure_message(command, child.process.returncode, child.tail))
        write_record(sweep_dir, job, state="failed", ended=time.time(), error=describe_error(error))
        raise error
    write_record(sweep_dir, job, state="done", ended=time.time())
    return "done"


def record_attempt(sweep_dir: Path, job: FoldJob, child: Child | None) -> None:
    """Adds the epoch the trainer resumed at, if it resumed, to the record's ``resumed_at``."""
    if child is not None and child.resumed_at is not None:
        record = read_record(sweep_dir, job) or {}
        write_record(sweep_dir, job, resumed_at=[*record.get("resumed_at", []), child.resumed_at])


def record_stop(sweep_dir: Path, job: FoldJob, child: Child | None) -> None:
    """Records a graceful stop: state ``stopped``, the epoch ``--c`` resumes at added to
    ``stopped_at`` (None where the trainer wrote no checkpoint, e.g. killed by a second Ctrl-C)."""
    record_attempt(sweep_dir, job, child)
    record = read_record(sweep_dir, job) or {}
    epoch = child.stopped_at if child is not None and stopped(child) else None
    write_record(sweep_dir, job, state="stopped", ended=time.time(),
                 stopped_at=[*record.get("stopped_at", []), epoch])


def slurm_job_id() -> str | None:
    """``<array job>_<task>`` inside a SLURM array task, the plain job id in a single job."""
    array_id, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_id}_{task}" if array_id and task else os.environ.get("SLURM_JOB_ID")
