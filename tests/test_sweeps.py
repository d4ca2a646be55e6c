"""Sweeps through the real CLI on a tiny synthetic dataset: a local sweep killed mid-fold and
resumed by a second call, then its report; and a SLURM sweep on a real one-node cluster."""

import csv
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from nnunetv2_segresmamba.sweeps.jobs import FoldJob, is_done
from nnunetv2_segresmamba.sweeps.predict import PredictJob
from nnunetv2_segresmamba.tools.pipeline import Workspace, run_command
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset
from tests.slurm_cluster import SlurmUnavailable, start_local_cluster
from tests.workspaces import drop_checkpoints

pytestmark = pytest.mark.e2e

SPEC = SyntheticSpec(dataset_id=992, name="Sweep", num_train=6, num_test=1, shape=(16, 32, 32),
                     spacing=(2.0, 1.0, 1.0), num_classes=2, num_channels=1)
NNUNET, UNETR = "nnUNetTrainerComparisonNnUNet_smoke", "nnUNetTrainerUNETR_smoke"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = Workspace(str(tmp_path_factory.mktemp("sweep")))
    make_dataset(ws.path("nnUNet_raw"), SPEC)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", str(SPEC.dataset_id), "-c", "3d_fullres", "-np", "2"],
                ws.env, quiet=True)
    yield ws
    drop_checkpoints(ws.root)


def cli(*args: str) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "nnunetv2_segresmamba"), *args]


def sweep_args(sweep_dir, trainers, folds) -> list[str]:
    return ["sweep", "-d", str(SPEC.dataset_id), "-tr", *trainers, "-f", *map(str, folds), "--device", "cpu",
            "--sweep-dir", str(sweep_dir)]


def job(trainer: str, fold: int) -> FoldJob:
    return FoldJob(SPEC.folder_name, "3d_fullres", trainer, fold)


def leaderboard(report_dir) -> dict[str, dict]:
    with open(os.path.join(report_dir, "leaderboard.csv")) as f:
        return {row["trainer"]: row for row in csv.DictReader(f)}


def test_dry_run_prints_the_plan_and_writes_nothing(workspace):
    sweep_dir = os.path.join(workspace.root, "sweeps", "dry")
    out = subprocess.run(cli(*sweep_args(sweep_dir, [NNUNET, UNETR], [0, 1]), "--dry-run"),
                         env={**os.environ, **workspace.env}, capture_output=True, text=True, check=True).stdout
    assert out.count("would run (local)") == 4
    assert job(UNETR, 1).key in out
    assert not os.path.exists(sweep_dir)
    refused = subprocess.run(cli(*sweep_args(sweep_dir, [f"{NNUNET}:nnUNetResEncUNetMPlans"], [0]), "--dry-run"),
                             env={**os.environ, **workspace.env}, capture_output=True, text=True)
    assert refused.returncode == 1
    assert f"nnUNetv2_plan_experiment -d {SPEC.dataset_id} -pl nnUNetPlannerResEncM" in refused.stderr


LOCAL_FOLDS = (0, 1, 2)  # done, killed in its second epoch, not started when the sweep was killed


def test_local_sweep_killed_then_resumed_then_reported(workspace):
    results, sweep_dir = workspace.path("nnUNet_results"), os.path.join(workspace.root, "sweeps", "local")
    finished, killed, untouched = (job(NNUNET, fold) for fold in LOCAL_FOLDS)
    args = sweep_args(sweep_dir, [NNUNET], LOCAL_FOLDS)
    kill_once_fold_resumable(args, workspace, killed.fold_dir(results))
    finished_at = os.path.getmtime(finished.fold_dir(results) / "checkpoint_final.pth")

    status = run_status(workspace.env, sweep_dir)
    assert re.search(rf"^done\s+{finished.key}", status, re.M)
    assert re.search(rf"^failed\s+{killed.key}\s+pid \d+ ended while training", status, re.M)
    assert re.search(rf"^not started\s+{untouched.key}", status, re.M)

    out = subprocess.run(cli(*args), env={**os.environ, **workspace.env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(rf"^{finished.key}\s+skip \(done\)", out.stdout, re.M)
    assert os.path.getmtime(finished.fold_dir(results) / "checkpoint_final.pth") == finished_at, \
        "a done fold was redone"
    assert re.search(r": Epoch 0 ?$", newest_training_log(killed.fold_dir(results)), re.M) is None, \
        "the killed fold restarted from epoch 0"
    for fold in LOCAL_FOLDS:
        assert is_done(job(NNUNET, fold).fold_dir(results))
        assert glob.glob(str(job(NNUNET, fold).fold_dir(results) / "validation" / "*.npz"))

    run_command(cli("report", "--sweep-dir", sweep_dir), workspace.env, quiet=True)
    board = leaderboard(os.path.join(sweep_dir, "report"))
    assert board[NNUNET]["folds_done"] == "3" and 0 <= float(board[NNUNET]["dice_mean"]) <= 1
    assert os.path.getsize(os.path.join(sweep_dir, "report", "dice_boxplot.png")) > 0


def newest_training_log(fold_dir) -> str:
    logs = sorted(glob.glob(str(fold_dir / "training_log_*.txt")))
    return open(logs[-1]).read() if logs else ""


def kill_once_fold_resumable(args, workspace, fold_dir) -> None:
    """Runs the sweep and kills it in the fold's second epoch: nnU-Net logs "Epoch 1" only after
    checkpoint_latest.pth of epoch 0 is fully written, so the kill leaves a resumable fold."""
    proc = subprocess.Popen(cli(*args), env={**os.environ, **workspace.env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while (not re.search(r": Epoch 1 ?$", newest_training_log(fold_dir), re.M) and proc.poll() is None
               and time.time() < deadline):
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (fold_dir / "checkpoint_latest.pth").exists(), "the fold wrote no checkpoint before the kill"
    assert not (fold_dir / "checkpoint_final.pth").exists(), "killed too late: the fold had finished"


def run_status(env, sweep_dir) -> str:
    return subprocess.run(cli("status", "--sweep-dir", sweep_dir), env={**os.environ, **env},
                          capture_output=True, text=True, check=True).stdout


STOPCHECK = "nnUNetTrainerComparisonNnUNet_stopcheck"  # 3 epochs; checkpoint_latest.pth only from a graceful stop
EPOCH_LINE = re.compile(r": Epoch (\d+) ?$", re.M)


def training_logs(fold_dir) -> list[str]:
    """The fold's nnU-Net training logs, one a process, oldest first."""
    return [open(path).read() for path in sorted(glob.glob(str(fold_dir / "training_log_*.txt")))]


def wait_for_log(fold_dir, pattern: str, proc: subprocess.Popen, count: int = 1, timeout_s: float = 600) -> None:
    """Waits until ``pattern`` is in ``count`` of the fold's training logs (the sweep still running)."""
    deadline = time.time() + timeout_s
    while sum(bool(re.search(pattern, log, re.M)) for log in training_logs(fold_dir)) < count:
        assert proc.poll() is None, f"the sweep ended (code {proc.returncode}) before {pattern!r} was logged"
        assert time.time() < deadline, f"{pattern!r} not logged in {timeout_s} s"
        time.sleep(0.1)


def assert_each_resume_where_it_stopped(fold_dir, stops: int) -> list[tuple[int, int]]:
    """Each training process after the first resumed at the epoch the one before was in when it
    stopped, or the next one (stopped at an epoch's end); the last trained all 3 epochs. Returns
    (epoch in progress at the stop, epoch resumed at) for each stop. With only the 1000-epoch
    checkpoint, --c would have started at epoch 0."""
    logs = training_logs(fold_dir)
    assert len(logs) == stops + 1, f"{len(logs)} training processes for {stops} stops"
    pairs = []
    for before, after in zip(logs, logs[1:]):
        in_progress = int(EPOCH_LINE.findall(before)[-1])
        said = re.search(r"Stopped by SIGUSR1, not failed: .* resumes at epoch (\d+)", before)
        resumed = re.search(r"Resuming at epoch (\d+)", after)
        assert said and resumed, "a process was not stopped gracefully, or the next did not resume"
        assert int(said.group(1)) == int(resumed.group(1)) == int(EPOCH_LINE.findall(after)[0])
        assert in_progress <= int(resumed.group(1)) <= in_progress + 1
        pairs.append((in_progress, int(resumed.group(1))))
    assert int(EPOCH_LINE.findall(logs[-1])[-1]) == 2 and "Training done." in logs[-1]
    return pairs


def test_local_sweep_ctrl_c_stops_the_training_gracefully_and_resumes(workspace):
    """Ctrl-C (SIGINT to the foreground process group) in epoch 1: the sweep forwards SIGUSR1 to
    nnUNetv2_train, which writes its checkpoint and exits 75; the rerun resumes at epoch 1."""
    results, sweep_dir = workspace.path("nnUNet_results"), os.path.join(workspace.root, "sweeps", "ctrl_c")
    fold = job(STOPCHECK, 0)
    args, env = sweep_args(sweep_dir, [STOPCHECK], [0]), {**os.environ, **workspace.env, "nnUNet_n_proc_DA": "1"}
    proc = subprocess.Popen(cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # SIG_DFL: as in a terminal, whatever this test inherited (a shell's background job ignores SIGINT)
    try:
        wait_for_log(fold.fold_dir(results), r": Epoch 1 ?$", proc)
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert re.search(rf"^stopped\s+{fold.key}\s+rerun the sweep to resume; 1 stop \(--c at epochs 1\)",
                     run_status(workspace.env, sweep_dir), re.M), out
    assert not (fold.fold_dir(results) / "checkpoint_final.pth").exists()

    run_command(cli(*args), {**workspace.env, "nnUNet_n_proc_DA": "1"}, quiet=True)
    assert is_done(fold.fold_dir(results))
    assert assert_each_resume_where_it_stopped(fold.fold_dir(results), stops=1) == [(1, 1)]
    assert re.search(rf"^done\s+{fold.key}\s+1 stop \(--c at epochs 1\); resumed at epochs 1\s",
                     run_status(workspace.env, sweep_dir), re.M)


SLURM_FOLD = 3  # the local sweeps' are 0 to 2


def test_slurm_array_runs_each_fold_and_requeues_one_stopped_twice(workspace, tmp_path):
    """One array of two tasks on a real one-node SLURM cluster: nnU-Net's smoke fold, and the
    stop-check fold, which gets submitit's timeout signal (SIGUSR2 to the job step, as SLURM sends
    it ``slurm_signal_delay_s`` before the time limit) in epoch 1, and again after the requeued task
    resumed, in epoch 2: each time the task stops the training gracefully and submitit requeues
    it. Both folds end done, each in its array task; then (``--test``) each trainer's ensemble
    predicts the test set as a task of a second array, and the report has both, cross-validation
    and test."""
    pytest.importorskip("submitit")
    try:
        cluster = start_local_cluster(tmp_path / "slurm", accounting=False)
    except SlurmUnavailable as exc:
        pytest.skip(f"no SLURM cluster on this machine: {exc}")
    results, sweep_dir = workspace.path("nnUNet_results"), os.path.join(workspace.root, "sweeps", "slurm")
    fold, plain = job(STOPCHECK, SLURM_FOLD), job(NNUNET, SLURM_FOLD)
    fold_dir, env = fold.fold_dir(results), {**os.environ, **workspace.env, **cluster.env}
    with cluster:
        proc = subprocess.Popen(cli(*sweep_args(sweep_dir, [STOPCHECK, NNUNET], [SLURM_FOLD]), "--executor", "slurm",
                                    "--partition", cluster.partition, "--gpus", "0", "--cpus", "1", "--time-min", "20",
                                    "--test", "--wait"),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for stop, epoch in enumerate((1, 2), start=1):
                wait_for_log(fold_dir, rf": Epoch {epoch} ?$", proc, count=1)
                task = json.load(open(os.path.join(sweep_dir, "submitted.json")))[fold.key]
                sent = cluster.run("scancel", "--signal=USR2", task)
                assert sent.returncode == 0, sent.stderr
                wait_for_log(fold_dir, r"Stopped by SIGUSR1", proc, count=stop)
            out = proc.communicate(timeout=600)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
        status = run_status(env, sweep_dir)
    assert proc.returncode == 0, out
    ensembles = [PredictJob(SPEC.folder_name, "3d_fullres", trainer, "nnUNetPlans", (SLURM_FOLD,),
                            os.path.join(workspace.path("nnUNet_raw"), SPEC.folder_name, "imagesTs"))
                 for trainer in (STOPCHECK, NNUNET)]
    for done in (fold, plain, *ensembles):
        record = json.load(open(os.path.join(sweep_dir, "records", f"{done.key}.json")))
        assert re.fullmatch(r"\d+_\d+", record["slurm_job_id"]), f"{done.key} did not run as a SLURM array task"
    assert all(is_done(j.fold_dir(results)) for j in (fold, plain))
    assert all(len(glob.glob(str(e.output_dir(sweep_dir) / "*.nii.gz"))) == SPEC.num_test for e in ensembles)
    assert re.search(rf"^done\s+{plain.key}\s", status, re.M), status
    pairs = assert_each_resume_where_it_stopped(fold_dir, stops=2)
    resumed = [r for _, r in pairs]
    assert re.search(rf"^done\s+{fold.key}\s+2 stops \(--c at epochs {resumed[0]}, {resumed[1]}\); resumed at "
                     rf"epochs {resumed[0]}, {resumed[1]}\s", status, re.M), status
    print(f"\nSLURM stops (epoch in progress, epoch resumed at): {pairs}")
    run_command(cli("report", "--sweep-dir", sweep_dir), env, quiet=True)
    board = leaderboard(os.path.join(sweep_dir, "report"))
    assert board[NNUNET]["folds_done"] == board[STOPCHECK]["folds_done"] == "1"
    with open(os.path.join(sweep_dir, "report", "cases.csv")) as f:
        splits = {(r["trainer"], r["split"]) for r in csv.DictReader(f)}
    assert splits == {(t, s) for t in (STOPCHECK, NNUNET) for s in ("cross-validation", "test")}
