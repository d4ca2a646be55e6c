"""The efficiency benchmark's --quick mode end to end, and its target arithmetic."""

import json
import subprocess
import sys

import pytest
import torch

from benchmarks.efficiency import Settings, run
from benchmarks.report import markdown, optimizer_state_mib, targets
from nnunetv2_segresmamba.registry import members


@pytest.mark.e2e
def test_quick_efficiency_run_measures_every_network_and_writes_its_files(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks.efficiency", "--quick", "--out", str(tmp_path)], check=True)
    results = json.loads((tmp_path / "efficiency.json").read_text())
    errors = [r for r in results["networks"] + results["steps"] + results["operators"] if "error" in r]
    assert not errors
    assert results["progress"]["done"] == results["progress"]["planned"] > 0
    assert {r["network"] for r in results["steps"]} == {m.network for m in members()}  # the five, by default
    assert all(r["peak_train_mib"] > 0 and r["train_step_s"] > 0 and r["inference_s"] > 0 for r in results["steps"])
    assert {(r["backend"], r["pass"]) for r in results["operators"]} >= {("pure", "fwd"), ("pure", "fwd+bwd")}
    table = (tmp_path / "efficiency.md").read_text()
    assert "## Peak training memory" in table and "| SegMamba |" in table and "## Targets" in table
    assert "Partial run" not in table
    for plot in ("memory.png", "time.png", "tom.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_targets_are_ratios_within_one_run():
    from benchmarks.scan_operator import arithmetic_limit

    def op(kind, backend, seconds, mib=100.0):
        return {"kind": kind, "backend": backend, "L": 32768, "d_model": 96, "pass": "fwd+bwd", "median_s": seconds,
                "peak_mib": mib}

    rate = 1e11
    limit = arithmetic_limit(32768, 96, "fwd+bwd", rate)
    results = {
        "steps": [{"network": n, "batch": 1, "precision": "fp32", "peak_train_mib": mib, "inference_s": s}
                  for n, mib, s in (("SegResMamba", 300.0, 1.0), ("SegMamba", 1000.0, 3.0), ("SwinUNETR", 400.0, 2.0))],
        "operators": [op("tom", "pure", 5.0), op("tom", "numba", 1.0, 50.0), op("tom", "mambapy", 9.0, 800.0),
                      op("scan", "numba", 4 * limit), op("scan_denormal", "numba", 6 * limit)],
        "fp32_ops_per_s": rate,
    }
    values = [(t["measured"], t["met"]) for t in targets(results)]
    assert values[0] == (0.3, True)  # 300 / 1000 <= 0.4
    assert values[1] == (0.75, False)  # 300 / 400 > 0.7
    assert values[2] == (pytest.approx(1 / 3), True)
    assert values[3] == (0.5, True)  # 1 / 2 <= 0.63
    assert values[4] == (9.0, True)  # mambapy / numba (not pure): 9 / 1 >= 8
    assert values[5] == (0.0625, True)  # 50 / 800 <= 0.1
    assert values[6] == (pytest.approx(4.0), False)  # 4x the arithmetic limit > 3
    assert values[7] == (pytest.approx(1.5), True)  # denormal / ordinary <= 1.5
    assert all(value == (None, None) for value in values[8:])  # GPU targets: not measured here


def test_gpu_targets_compare_triton_within_one_run_and_only_at_128_cubed():
    def op(backend, seconds, mib):
        return {"kind": "tom", "backend": backend, "L": 262144, "d_model": 48, "pass": "fwd+bwd", "median_s": seconds,
                "peak_mib": mib}

    steps = [{"network": n, "batch": 1, "precision": "amp", "train_step_s": s, "peak_train_mib": mib}
             for n, s, mib in (("SegResMamba", 0.3, 4608.0), ("nnU-Net", 0.2, 3000.0))]
    results = {"settings": {"size": [128, 128, 128], "device": "cuda"}, "steps": steps,
               "operators": [op("pure", 3.0, 900.0), op("triton", 0.1, 300.0), op("cuda", 0.08, 400.0)]}
    gpu = {t["target"]: (t["measured"], t["met"]) for t in targets(results)[8:]}
    assert list(gpu.values()) == [
        (pytest.approx(30.0), True),  # pure / Triton >= 20
        (pytest.approx(1.25), True),  # Triton / mamba_ssm <= 1.5
        (0.75, True),  # Triton's peak / mamba_ssm's <= 1
        (pytest.approx(1.5), False),  # SegResMamba / nnU-Net AMP step > 1.2
        (4.5, True),  # 4608 MiB = 4.5 GiB <= 5.1
    ]
    results["settings"]["size"] = [64, 64, 64]
    assert [t["measured"] for t in targets(results)[11:]] == [None, None]


def test_a_stopped_run_keeps_what_it_measured_after_every_case():
    settings = Settings(size=[64, 32, 32], networks=["UNETR"], batches=[1], precisions=["fp32"], repeats=1,
                        tom_kinds=["scan"], tom_lengths=[64], tom_d_models=[8], tom_backends=["pure"])
    saved = []
    run(settings, save=lambda results: saved.append(json.loads(json.dumps(results))))
    assert [s["progress"]["done"] for s in saved] == [1, 2, 3, 4]  # MACs, one step, scan fwd, scan fwd+bwd
    first = saved[0]
    assert len(first["networks"]) == 1 and not first["steps"] and not first["operators"]
    assert "**Partial run: 1 of 4 cases measured.**" in markdown(first)
    assert "Partial run" not in markdown(saved[-1])


def test_memory_table_splits_off_the_optimizer_state():
    mib = 2**20
    results = batch1_fp32_results(
        networks=[{"network": "SegResMamba", "params": 10 * mib}, {"network": "SegMamba", "params": 5 * mib}],
        steps=[{"network": n, "batch": 1, "precision": "fp32", "peak_train_mib": m}
               for n, m in (("SegResMamba", 260.0), ("SegMamba", 480.0))])
    assert optimizer_state_mib(results, "SegMamba") == 80.0  # 16 B per parameter
    table = markdown(results)
    # peaks 260 and 480 MiB, less 160 and 80 MiB of state: rests 100 and 400 MiB
    assert "| SegMamba | 480 | 80 | 13.51 | 1.85 | 4.00 |" in table
    assert "## ToM operator" not in table  # the ToM layer was not measured in this run


def test_an_allocation_failure_reads_as_out_of_memory():
    error = ("RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
             "can't allocate memory: you tried to allocate 6442450944 bytes.")
    results = batch1_fp32_results(networks=[], steps=[{"network": "SegMamba", "batch": 1, "precision": "fp32",
                                                        "error": error}])
    assert "- SegMamba batch 1 fp32: out of memory (the measuring process may use 70% of RAM" in markdown(results)


def batch1_fp32_results(networks: list[dict], steps: list[dict]) -> dict:
    """A run's results dict at 64^3, batch 1, fp32, without the ToM layer."""
    names = list(dict.fromkeys(r["network"] for r in steps))
    return {"settings": {"networks": names, "batches": [1], "precisions": ["fp32"], "size": [64, 64, 64],
                         "in_channels": 1, "classes": 2, "repeats": 1},
            "machine": {"cpu": "x", "cores": 2, "torch": "t"}, "command": "c", "operators": [],
            "networks": networks, "steps": steps}


def test_the_gpu_check_reads_which_paths_predict_ran_from_the_path_log(tmp_path, monkeypatch):
    """gpu_check's train part passes only if nnUNetv2_predict ran the fused kernels on the GPU in
    inference mode: what a CLI process appends to the backends' path log, read back."""
    from benchmarks.gpu_check import fused_paths_at_predict
    from nnunetv2_segresmamba.operators import backends

    log = tmp_path / "paths.jsonl"
    monkeypatch.setenv(backends.PATH_LOG_VAR, str(log))
    monkeypatch.setattr(sys, "argv", ["/venv/bin/nnUNetv2_predict"])
    backends._log_path.cache_clear()
    x = torch.randn(1, 4, 8)
    with torch.inference_mode():
        backends.resolve_path("pure", x)
    assert fused_paths_at_predict(log) == set()  # on the CPU: not the GPU's fast path
    log.write_text(log.read_text().replace('"device": "cpu"', '"device": "cuda:0"'))
    assert fused_paths_at_predict(log) == {"pure"}  # the slow path on the GPU: the check fails on it
    backends._log_path.cache_clear()
