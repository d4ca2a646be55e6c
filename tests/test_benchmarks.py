"""The efficiency benchmark's --quick mode end to end, a 2D run with Swin-UMamba's networks, the
target arithmetic, and the GPU check's CPU-runnable parts."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.efficiency import NETWORKS, NETWORKS_2D, Settings, parse_settings, run, size_error
from benchmarks.machine import RESULTS, RUNS, new_run_folder
from benchmarks.model_cost import count
from benchmarks.network_step import measure_network, random_batch, recorded_tom_paths, training_step
from benchmarks.report import NO_MAMBA, markdown, optimizer_state_mib, targets
from nnunetv2_segresmamba.networks.umamba import UMambaLayer, feature_map_sizes
from nnunetv2_segresmamba.operators.backends import PATH_LOG_VAR
from nnunetv2_segresmamba.operators.ss2d import SS2D
from nnunetv2_segresmamba.operators.tom import TriOrientedMamba
from nnunetv2_segresmamba.registry import Member, members, network


def _files_and_stamps(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.e2e
def test_quick_efficiency_run_measures_every_network_and_writes_its_files_to_a_new_folder():
    """No --out: the run writes into a new folder of its own, and no other file of
    benchmarks/results (the committed results, earlier runs) changes."""
    before = _files_and_stamps(RESULTS)
    done = subprocess.run([sys.executable, "-m", "benchmarks.efficiency", "--quick"], check=True,
                          capture_output=True, text=True)
    written = {Path(line.removeprefix("wrote ")) for line in done.stdout.splitlines() if line.startswith("wrote ")}
    out = next(iter(written)).parent
    try:
        assert out.parent == RUNS and out not in {p.parent for p in before}
        after = _files_and_stamps(RESULTS)
        assert {p: after[p] for p in before} == before and set(after) - set(before) == set(out.iterdir())
        _check_quick_run(out)
    finally:
        shutil.rmtree(out)


def test_a_run_folder_is_always_a_new_one(tmp_path):
    machine = {"cores": 2}
    first, second = new_run_folder(machine, tmp_path), new_run_folder(machine, tmp_path)  # the same second, likely
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.endswith("-cpu-2core") and not any(first.iterdir()) and not any(second.iterdir())


def _check_quick_run(tmp_path: Path) -> None:
    results = json.loads((tmp_path / "efficiency.json").read_text())
    errors = [r for r in results["networks"] + results["steps"] + results["operators"] if "error" in r]
    assert not errors
    assert results["progress"]["done"] == results["progress"]["planned"] > 0
    # by default the paper's five, one ResEnc preset, U-Mamba Bot and Enc and their No-Mamba control
    assert {r["network"] for r in results["steps"]} == set(NETWORKS) == {m.network for m in members()} | {
        "nnU-Net ResEnc M", "U-Mamba Bot", "U-Mamba Enc", NO_MAMBA}
    assert all(r["peak_train_mib"] > 0 and r["train_step_s"] > 0 and r["inference_s"] > 0 for r in results["steps"])
    macs = {r["network"]: r for r in results["networks"]}
    assert macs["U-Mamba Bot"]["macs"] > macs[NO_MAMBA]["macs"] and macs["U-Mamba Bot"]["scan_state_update_macs"] > 0
    paths = {r["network"]: r["tom_paths"] for r in results["steps"]}
    fused = ["numba"] if importlib.util.find_spec("numba") else ["pure"]
    assert paths["U-Mamba Bot"] == paths["U-Mamba Enc"] == fused and paths[NO_MAMBA] == paths["nnU-Net"] == []
    measured = {t["target"]: t["measured"] for t in results["targets"]}
    assert measured["peak training memory, U-Mamba Enc / nnU-Net (batch 1, fp32)"] > 0
    assert all((measured[t] is not None) == (fused == ["numba"]) for t in measured if "numba path" in t)
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
    assert all(value == (None, None) for value in values[8:])  # GPU and U-Mamba targets: not measured here


def test_gpu_targets_compare_triton_within_one_run_and_only_at_128_cubed():
    def op(backend, seconds, mib):
        return {"kind": "tom", "backend": backend, "L": 262144, "d_model": 48, "pass": "fwd+bwd", "median_s": seconds,
                "peak_mib": mib}

    steps = [{"network": n, "batch": 1, "precision": "amp", "train_step_s": s, "peak_train_mib": mib}
             for n, s, mib in (("SegResMamba", 0.3, 4608.0), ("nnU-Net", 0.2, 3000.0))]
    results = {"settings": {"size": [128, 128, 128], "device": "cuda"}, "steps": steps,
               "operators": [op("pure", 3.0, 900.0), op("triton", 0.1, 300.0), op("cuda", 0.08, 400.0)]}
    gpu = {t["target"]: (t["measured"], t["met"]) for t in targets(results)[8:13]}
    assert list(gpu.values()) == [
        (pytest.approx(30.0), True),  # pure / Triton >= 20
        (pytest.approx(1.25), True),  # Triton / mamba_ssm <= 1.5
        (0.75, True),  # Triton's peak / mamba_ssm's <= 1
        (pytest.approx(1.5), False),  # SegResMamba / nnU-Net AMP step > 1.2
        (4.5, True),  # 4608 MiB = 4.5 GiB <= 5.1
    ]
    results["settings"]["size"] = [64, 64, 64]
    assert [t["measured"] for t in targets(results)[11:13]] == [None, None]


BOT_INFERENCE = f"inference time per patch, U-Mamba Bot / {NO_MAMBA} (fp32, numba path)"
ENC_INFERENCE = f"inference time per patch, U-Mamba Enc / {NO_MAMBA} (fp32, numba path)"
ENC_MEMORY = "peak training memory, U-Mamba Enc / nnU-Net (batch 1, fp32)"


def umamba_targets(results: dict) -> dict[str, tuple]:
    return {t["target"]: (t["measured"], t["met"]) for t in targets(results) if "U-Mamba" in t["target"]}


def test_umamba_targets_are_ratios_within_one_run():
    def step(network, inference_s, mib, paths):
        return {"network": network, "batch": 1, "precision": "fp32", "inference_s": inference_s,
                "peak_train_mib": mib, "tom_paths": paths}

    results = {"operators": [], "steps": [step("U-Mamba Bot", 1.1, 900.0, ["numba"]),
                                          step("U-Mamba Enc", 1.5, 2400.0, ["numba"]),
                                          step(NO_MAMBA, 1.0, 800.0, []), step("nnU-Net", 0.5, 1000.0, [])]}
    assert umamba_targets(results) == {
        BOT_INFERENCE: (pytest.approx(1.1), True),  # 1.1 / 1.0 <= 1.2
        ENC_INFERENCE: (1.5, False),  # 1.5 / 1.0 > 1.2
        ENC_MEMORY: (2.4, True),  # 2400 / 1000 <= 3.23 (nnU-Net Revisited: 24.9 / 7.70 GB)
    }
    results["steps"][0]["tom_paths"] = ["pure"]  # not the numba path that the target is about
    del results["steps"][3]  # nnU-Net not measured
    assert umamba_targets(results) == {BOT_INFERENCE: (None, None), ENC_INFERENCE: (1.5, False),
                                       ENC_MEMORY: (None, None)}
    results["steps"] = results["steps"][:2]  # no No-Mamba control: not measured rather than failed
    assert set(umamba_targets(results).values()) == {(None, None)}
    table = markdown(batch1_fp32_results([], results["steps"]))
    assert f"| {ENC_INFERENCE} | - | <= 1.2 | not measured |" in table


def mamba_layer_macs(layer: UMambaLayer, batch: int, channels: int, voxels: int) -> int:
    """The fvcore-style MACs of one U-Mamba layer on (batch, channels, voxels), written out: in_proj,
    x_proj, dt_proj, the state update and the output contraction, out_proj, and the depthwise conv
    as computed (over the sequence and its causal padding of d_conv - 1 steps)."""
    mamba = layer.mamba
    length, d_model = (channels, voxels) if layer.channel_token else (voxels, channels)
    e, n, r, k = mamba.d_inner, mamba.d_state, mamba.dt_rank, mamba.d_conv
    per_step = d_model * 2 * e + e * (r + 2 * n) + r * e + 2 * e * n + e * d_model
    return batch * (length * per_step + (length + k - 1) * e * k)


def test_umamba_macs_count_every_mamba_layer():
    """U-Mamba less its Mamba layers: Bot against the No-Mamba control, and Enc (its deepest layer
    scans 256 channel tokens of 4^3 voxels) against itself with identities in their place."""
    size = [32, 32, 32]
    bot_member, enc_member = network("U-Mamba Bot"), network("U-Mamba Enc")
    bot = bot_member.build(1, 3, size)
    bottleneck = math.prod(feature_map_sizes(size, bot.encoder.strides)[-1])
    expected = mamba_layer_macs(bot.mamba_layer, 1, bot.encoder.output_channels[-1], bottleneck)
    assert count(bot_member, 1, 3, size)["macs"] - count(network(NO_MAMBA), 1, 3, size)["macs"] == expected

    enc = enc_member.build(1, 3, size)
    layers = list(enc.encoder.mamba_layers)
    assert [layer.channel_token for layer in layers] == [False, False, False, True]
    expected = sum(mamba_layer_macs(layer, 1, c, math.prod(s)) for layer, c, s in
                   zip(layers, enc.encoder.output_channels, feature_map_sizes(size, enc.encoder.strides)))

    def without_mamba(in_channels, out_channels, patch_size):
        net = enc_member.build(in_channels, out_channels, patch_size)
        net.encoder.mamba_layers = torch.nn.ModuleList(torch.nn.Identity() for _ in layers)
        return net

    identities = Member("nnUNetTrainerUMambaEnc", "U-Mamba Enc, identities", without_mamba)
    assert count(enc_member, 1, 3, size)["macs"] - count(identities, 1, 3, size)["macs"] == expected


def on_the_pure_path(member: Member) -> Member:
    def build(in_channels, out_channels, patch_size):
        net = member.build(in_channels, out_channels, patch_size)
        for module in net.modules():
            if isinstance(module, (TriOrientedMamba, SS2D)):
                module.backend = "pure"
        return net

    return Member(member.trainer, member.network, build, spatial_dims=member.spatial_dims)


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="compares the numba path with the pure one")
@pytest.mark.parametrize("name, size", [("SegResMamba", [32, 32, 32]), ("U-Mamba Enc", [32, 32, 32]),
                                        ("Swin-UMamba-dagger", [32, 32])])
def test_macs_are_the_same_whatever_path_the_tom_layers_take(name, size):
    """The numba kernels hide the depthwise conv (ToM) and the output contraction (ToM and SS2D)
    from the counter, which sees them on the pure path: what the count adds for them is what the
    pure path counts."""
    fused, pure = (count(m, 1, 3, size) for m in (network(name), on_the_pure_path(network(name))))
    assert fused["macs"] == pure["macs"] and fused["scan_state_update_macs"] == pure["scan_state_update_macs"] > 0


def test_the_training_step_is_cross_entropy_backward_and_the_optimizer_step():
    torch.manual_seed(0)
    net, lr = torch.nn.Conv2d(2, 3, 1), 0.5
    w, b = net.weight.detach().clone()[:, :, 0, 0], net.bias.detach().clone()
    x, target = random_batch(2, 2, 3, [5, 7], "cpu")
    assert x.shape == (2, 2, 5, 7) and target.shape == (2, 5, 7) and 0 <= target.min() and target.max() < 3
    training_step(net, torch.optim.SGD(net.parameters(), lr=lr), x, target, "cpu", "fp32")()
    # plainly: a 1x1 conv's logits, and the gradient of the mean cross-entropy, (softmax - one-hot) / voxels
    logits = torch.einsum("kc,bchw->bkhw", w, x) + b[None, :, None, None]
    grad = (logits.softmax(1) - F.one_hot(target, 3).permute(0, 3, 1, 2)) / target.numel()
    assert torch.allclose(net.weight[:, :, 0, 0], w - lr * torch.einsum("bkhw,bchw->kc", grad, x), atol=1e-6)
    assert torch.allclose(net.bias, b - lr * grad.sum((0, 2, 3)), atol=1e-6)


def test_a_network_step_row_times_training_and_inference():
    row = measure_network("nnU-Net", 1, 2, [64, 64], 1, "fp32", "cpu", 1, with_inference=True)
    assert row["train_step_s"] > 0 and row["inference_s"] > 0 and row["peak_train_mib"] >= 0
    assert row["tom_paths"] == []


def test_a_step_row_names_the_tom_paths_it_ran(monkeypatch):
    monkeypatch.delenv(PATH_LOG_VAR, raising=False)
    layer = TriOrientedMamba(8, d_state=4, backend="pure", directions=("",))
    with recorded_tom_paths() as paths:
        assert paths() == []
        layer(torch.randn(1, 6, 8), num_slices=1)
        assert paths() == ["pure"]
    assert PATH_LOG_VAR not in os.environ


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


def test_the_default_networks_follow_the_patch_dimensionality():
    assert parse_settings([])[0].networks == NETWORKS == parse_settings(["--size", "64", "64", "64"])[0].networks
    assert parse_settings(["--size", "64", "64"])[0].networks == NETWORKS_2D == [
        "SegResMamba", "SwinUNETR", "UNETR", "nnU-Net", "nnU-Net ResEnc M", "U-Mamba Bot", "U-Mamba Enc", NO_MAMBA,
        "Swin-UMamba", "Swin-UMamba-dagger"]  # SegMamba builds 3D networks only
    assert not {"Swin-UMamba", "Swin-UMamba-dagger"} & set(NETWORKS)
    with pytest.raises(SystemExit, match="2 values"):
        parse_settings(["--size", "64"])


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="Swin-UMamba's scans on the numba path")
def test_a_2d_run_measures_swin_umamba_beside_nnunet_and_refuses_3d_only_networks():
    settings = Settings(size=[64, 64], networks=["nnU-Net", "Swin-UMamba-dagger", "SegMamba"], batches=[1],
                        precisions=["fp32"], repeats=1, tom_kinds=[])
    results = run(settings)
    macs, steps = ({r["network"]: r for r in results[k]} for k in ("networks", "steps"))
    assert "3D patches" in macs["SegMamba"]["error"] and "3D patches" in steps["SegMamba"]["error"]
    # the dagger's VSS blocks (H W tokens, E = 2 C, blocks): encoder 16^2 x 192 x 2, 8^2 x 384 x 2,
    # 4^2 x 768 x 9, 2^2 x 1536 x 2; decoder 4^2 x 768 x 2, 8^2 x 384 x 2, 16^2 x 192 x 2; each
    # block scans its map in 4 orders with N = 16 states
    blocks = [(256, 192, 2), (64, 384, 2), (16, 768, 9), (4, 1536, 2), (16, 768, 2), (64, 384, 2), (256, 192, 2)]
    updates = sum(4 * tokens * inner * n * 16 for tokens, inner, n in blocks)
    assert macs["Swin-UMamba-dagger"]["scan_state_update_macs"] == updates == 28311552
    for name, paths in (("nnU-Net", []), ("Swin-UMamba-dagger", ["numba"])):
        assert macs[name]["macs"] > 0 and macs[name]["counted_on"] in ("meta", "cpu")
        assert steps[name]["peak_train_mib"] > 0 and steps[name]["inference_s"] > 0
        assert steps[name]["tom_paths"] == paths
    assert all(t["measured"] is None for t in results["targets"])  # 3D targets; no operator measured
    table = markdown(results)
    assert "## 2D patch: ratios to nnU-Net in this run" in table and "| nnU-Net | 1.00 | 1.00 |" in table
    assert "- SegMamba batch 1 fp32: ValueError: SegMamba takes 3D patches" in table


def test_a_2d_report_divides_by_nnunet_and_holds_no_3d_targets():
    steps = [{"network": n, "batch": 1, "precision": "fp32", "peak_train_mib": mib, "train_step_s": s,
              "inference_s": s / 4} for n, mib, s in (("nnU-Net", 400.0, 2.0), ("Swin-UMamba", 1000.0, 3.0),
                                                     ("SegResMamba", 500.0, 1.0), ("SwinUNETR", 800.0, 4.0))]
    results = batch1_fp32_results([{"network": "nnU-Net", "macs": 4e9}, {"network": "Swin-UMamba", "macs": 6e9}],
                                  steps)
    assert "## 2D patch" not in markdown(results)  # a 3D run: the paper's layout alone
    measured = {t["target"]: t["measured"] for t in targets(results)}
    assert measured["peak training memory, SegResMamba / SwinUNETR (batch 1, fp32)"] == 0.625
    results["settings"]["size"] = [64, 64]
    table = markdown(results)
    # MACs, training peak, train step, inference over nnU-Net's
    assert "| Swin-UMamba | 1.50 | 2.50 | 1.50 | 1.50 |" in table and "| SwinUNETR | - | 2.00 | 2.00 | 2.00 |" in table
    assert "not measured on this run's 2D patches" in table
    measured = {t["target"]: t["measured"] for t in targets(results)}
    assert measured["peak training memory, SegResMamba / SwinUNETR (batch 1, fp32)"] is None


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


def test_the_gpu_check_measures_networks_that_build_at_their_patches():
    from benchmarks.gpu_check import NETWORKS as GPU_NETWORKS
    from benchmarks.gpu_check import swin2d_settings

    baselines = ["nnU-Net ResEnc M", "U-Mamba Bot", "U-Mamba Enc"]
    assert set(baselines) <= set(GPU_NETWORKS)
    swin2d = swin2d_settings()
    assert swin2d.networks == ["nnU-Net", "Swin-UMamba", "Swin-UMamba-dagger"] and len(swin2d.size) == 2
    with torch.device("meta"):  # their builders plan U-Nets and refuse a patch nnU-Net would not plan
        for name, size in [*((n, [128, 128, 128]) for n in baselines), *((n, swin2d.size) for n in swin2d.networks)]:
            assert size_error(network(name), size) is None and network(name).build(1, 14, size) is not None


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="the numba path stands in for Triton's")
def test_the_gpu_checks_ss2d_comparison_passes_a_fused_path_and_fails_a_wrong_one(monkeypatch):
    """gpu_check's ss2d part compares Triton with the pure path; on a CPU, numba's fused kernels
    take Triton's place. A scan that reads the map in the wrong orders must fail it."""
    from benchmarks import gpu_check
    from nnunetv2_segresmamba.operators import ss2d

    result = gpu_check.compare_ss2d("numba", "cpu")
    assert result["ok"] and result["input"] == [2, 16, 24, 96]
    assert result["output_error"] < 1e-5 and set(result["gradient_errors"]) >= {"x", "A_logs", "in_proj.weight"}
    monkeypatch.setattr(ss2d, "SS2D_KINDS", ss2d.SS2D_KINDS[::-1])  # the fused path's four orders swapped
    assert not gpu_check.compare_ss2d("numba", "cpu", (1, 4, 6, 8))["ok"]


def test_memory_modes_run_each_mode_in_a_process_and_divide_by_the_plain_step(tmp_path, capsys):
    from benchmarks.memory_modes import MODES, demo_trainer, main
    from nnunetv2_segresmamba import trainers

    main(["--sizes", "32", "--batches", "1", "--modes", "plain", "GaLore", "--out", str(tmp_path)])
    plain, galore = json.loads((tmp_path / "memory_modes.json").read_text())["rows"]
    assert plain["mode"] == "plain" and galore["mode"] == "GaLore" and plain["peak_train_mib"] > 0
    weights_and_moments = 3 * plain["optimizer_state_mib"] / 2  # fp32 weights, and AdamW's two moments
    assert weights_and_moments < plain["peak_tensors_mib"] < plain["peak_train_mib"]
    assert galore["optimizer_state_mib"] < 0.35 * plain["optimizer_state_mib"]  # SegResMamba at paper widths
    table = (tmp_path / "memory_modes.md").read_text()
    state_ratio = galore["optimizer_state_mib"] / plain["optimizer_state_mib"]
    assert "| 32^3 | 1 | plain |" in table and f"| {state_ratio:.2f} |" in table and "memory modes, fp32, " in table
    with pytest.raises(SystemExit) as refused:  # AMP is nnU-Net's GPU training: refused on the CPU, with advice
        main(["--sizes", "32", "--precision", "amp", "--out", str(tmp_path)])
    assert refused.value.code == 2 and "use it with --device cuda" in capsys.readouterr().err
    assert all(hasattr(trainers, demo_trainer(mode)) for mode in MODES)  # --demo-dice's trainers
    with pytest.raises(SystemExit):  # the demo has its own patch: step options are refused, not ignored
        main(["--demo-dice", str(tmp_path / "demo"), "--sizes", "64", "--out", str(tmp_path)])
    assert "--sizes set the measured step" in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_memory_modes_judge_issue_20s_targets_at_128():
    from benchmarks.memory_modes import TARGETS, judge

    def row(mode, batch, peak, step, state):
        return {"mode": mode, "size": 128, "batch": batch, "peak_train_mib": peak, "step_s": step,
                "optimizer_state_mib": state}

    rows = [row("plain", 1, 1000, 10, 400), row("lowmem", 1, 560, 13, 400), row("GaLore", 1, 950, 10, 100),
            row("plain", 2, 1900, 20, 400), row("lowmem_GaLore", 2, 999, 25, 100)]
    verdicts = judge(rows)
    assert [v["target"] for v in verdicts] == [t.name for t in TARGETS]
    # 0.56 > 0.55; no tensors' peak in these rows (as on a GPU); 999 MiB at b2 < 1000 at b1
    assert [v["met"] for v in verdicts] == [False, None, True, True, True]
    assert verdicts[0]["ratio"] == pytest.approx(0.56) and verdicts[4]["ratio"] == pytest.approx(0.999)
    assert [v["met"] for v in judge(rows[:1])] == [None] * len(TARGETS)  # nothing but plain measured
