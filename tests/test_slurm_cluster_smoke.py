"""submitit runs a job and a job array on a real one-node SLURM cluster (skipped where SLURM cannot start)."""

import time
from collections.abc import Callable, Iterator

import pytest

from tests.slurm_cluster import LocalSlurmCluster, SlurmUnavailable, start_local_cluster

submitit = pytest.importorskip("submitit")


@pytest.fixture(params=[False, True], ids=["no-accounting", "accounting"])
def cluster(request, tmp_path, monkeypatch) -> Iterator[LocalSlurmCluster]:
    """A fresh cluster, with and without accounting, that SLURM clients of this process talk to."""
    try:
        cluster = start_local_cluster(tmp_path / "slurm", accounting=request.param)
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    with cluster:
        for name, value in cluster.env.items():
            monkeypatch.setenv(name, value)
        yield cluster


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Polls ``condition`` every half second; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def test_submitit_runs_a_job_and_an_array(cluster, tmp_path):
    def square(x: int) -> int:  # nested, so cloudpickle ships it by value: jobs need not import this module
        return x * x

    executor = submitit.AutoExecutor(folder=tmp_path / "jobs" / "%j", cluster="slurm")
    executor.update_parameters(slurm_partition=cluster.partition, timeout_min=5, cpus_per_task=1)
    job = executor.submit(square, 3)
    array = executor.map_array(square, [4, 5])
    jobs = [job, *array]
    _wait_until(lambda: all(j.done() for j in jobs), "the jobs to finish")

    assert job.result() == 9 and [j.result() for j in array] == [16, 25]
    assert {j.job_id.split("_")[0] for j in array} == {array[0].job_id.split("_")[0]}  # one array job
    if cluster.accounting:
        _wait_until(lambda: all(j.get_info(mode="force").get("State") == "COMPLETED" for j in jobs),
                    "sacct to report the jobs COMPLETED", timeout_s=30.0)
        assert job.state == "COMPLETED"
    else:  # sacct fails without accounting storage: submitit shrugs that off and knows no state
        assert job.state == "UNKNOWN"
