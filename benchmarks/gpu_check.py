"""The GPU check: one script, planned to run in under 8 minutes on an H100/H200 (not yet timed on one),
that writes its figures to a new folder ``benchmarks/results/runs/<date>-<time>-<gpu>/`` (or ``--out``):

1. ``tests``: the operator tests with the Triton kernels compiled for the GPU, including the
   comparisons with the pure path and with mamba_ssm where it loads, the U-Mamba tests where
   dynamic_network_architectures loads and the checkpointing tests (a ToM direction by direction
   on Triton too) where nnunetv2 loads (``tests.log``);
2. ``tom``: the ToM layer fwd+bwd at (L=262144, d_model=48) and (L=32768, d_model=96) with
   Triton, the pure path and mamba_ssm where it loads, and the pure scan at several chunk sizes;
3. ``ss2d``: Swin-UMamba's SS2D layer on the compiled Triton path against its pure path, output
   and every gradient, on a (2, 16, 24, 96) map (seconds);
4. ``networks``: training step, peak memory and inference at 128^3, batch 1, fp32 and AMP, for
   SegResMamba, SegMamba, SwinUNETR, nnU-Net's default network, nnU-Net ResEnc M (the L and XL
   presets build the same network for a patch) and U-Mamba Bot and Enc;
5. ``swin2d``: training step (forward, backward, AdamW) and its peak memory at 512 x 512,
   batch 2, AMP, for Swin-UMamba, Swin-UMamba-dagger and nnU-Net's network, whose figures they
   are divided by (``swin2d/efficiency.md``); their SS2D layers must have run Triton or mamba_ssm
   (three measuring processes; planned, not yet timed);
6. ``memory_modes``: SegResMamba's training step at 128^3, batch 1 and 2, AMP, plain, ``_lowmem``,
   ``_GaLore`` and both (:mod:`benchmarks.memory_modes`, eight measuring processes; planned, not
   yet timed): peak memory, step time and optimizer state as ratios to the plain step
   (``memory_modes/memory_modes.md``), with the targets of issue 20;
7. ``train``: the demo through the stock CLI on the GPU: ``nnUNetv2_train`` with AMP for
   5 x 24 steps, then predict and evaluate; every logged loss must be finite (``train.log``),
   and ``nnUNetv2_predict``, in inference mode, must have run the fused kernels (Triton, or
   mamba_ssm where it loads), as the backends' path log says (``paths.jsonl``).

Parts 2 and 4 share ``efficiency.json``/``efficiency.md`` with the targets of issue 9;
``gpu_check.json``/``gpu_check.md`` say what each part did. Each part first checks the
packages it needs; a missing one is named with what to install, and the next part runs.
Usage, from the repository root on a CUDA machine::

    python -m benchmarks.gpu_check                     # every part
    python -m benchmarks.gpu_check --parts tests tom   # only some
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks import efficiency, report
from benchmarks.machine import describe, new_run_folder
from benchmarks.network_step import median_time
from benchmarks.scan_operator import make_call
from nnunetv2_segresmamba.operators.ss2d import SS2D
from nnunetv2_segresmamba.tools.layout import write_atomically

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_TESTS = ["tests/test_triton_tom.py", "tests/test_fused_tom.py", "tests/test_tom.py",
                  "tests/test_selective_scan.py"]
# test files that run where their imports load: U-Mamba's layer against the official math, its
# layout and constructors (about 20 s on 2 CPU cores); checkpointing's gradients, with a ToM
# direction by direction on Triton's compiled kernels (the trainers import nnunetv2, MONAI and
# dynamic_network_architectures)
TRAINER_PACKAGES = ("nnunetv2", "monai", "dynamic_network_architectures")  # what importing our trainers needs
OPTIONAL_TESTS = {"tests/test_umamba.py": ("dynamic_network_architectures",), "tests/test_lowmem.py": TRAINER_PACKAGES}
TOM_CASES = ((262144, 48), (32768, 96))  # the ToM's inputs at stages 0 and 1 of a 128^3 patch
PURE_CHUNKS = (64, 256, 512, 2048)
TRITON_CHUNKS = (32, 64, 128, 256)
NETWORKS = ["SegResMamba", "SegMamba", "SwinUNETR", "nnU-Net", "nnU-Net ResEnc M", "U-Mamba Bot", "U-Mamba Enc"]
SS2D_INPUT = (2, 16, 24, 96)  # (B, H, W, C): C as VMamba-Tiny's first stage, L = 384 per scan
# largest |fused - pure| over the pure one's largest magnitude, per tensor: fp32 rounding is ~1e-6,
# a wrong scan order or kernel O(1)
SS2D_TOLERANCE = {"output": 1e-4, "gradient": 1e-3}
SWIN_2D_NETWORKS = ["nnU-Net", *efficiency.BASELINES_2D]  # nnU-Net's: the ratios' reference
GPU_FAST_PATHS = frozenset({"triton", "cuda"})  # the scan paths a GPU run must take (operators.backends)
NNUNET_PACKAGES = ("nnunetv2", "dynamic_network_architectures", "batchgenerators", "acvl_utils", "SimpleITK",
                   "monai")
WHEELS_HINT = ("without a package index, install wheels built elsewhere as documentation/gpu_check.md says "
               "(benchmarks/gpu_wheels.sh) and put their folder on PYTHONPATH")


@dataclass(frozen=True)
class Part:
    name: str
    needs: tuple[str, ...]  # importable modules
    run: Callable[[Path], dict]


def missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def took_fast_paths(tom_paths: list[str] | None) -> bool:
    """Whether a measured row's ToMs ran only on a fast GPU path (none recorded: no)."""
    return set(tom_paths or ["none"]) <= GPU_FAST_PATHS


def tests_to_run() -> list[str]:
    """The test files of the ``tests`` part: the operators', and the optional ones where their imports load."""
    return OPERATOR_TESTS + [test for test, needs in OPTIONAL_TESTS.items() if not missing(needs)]


def run_tests(out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests_to_run()],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    (out / "tests.log").write_text(proc.stdout + proc.stderr)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"ok": proc.returncode == 0, "summary": summary}


def tom_settings() -> list[efficiency.Settings]:
    backends = ["triton", "pure"] + (["cuda"] if importlib.util.find_spec("mamba_ssm") else [])
    base = efficiency.Settings(networks=[], batches=[1], precisions=["fp32"], repeats=3, tom_kinds=["tom"],
                               tom_backends=backends, device="cuda")
    return [replace(base, tom_lengths=[length], tom_d_models=[d_model]) for length, d_model in TOM_CASES]


def network_settings() -> efficiency.Settings:
    return efficiency.Settings(size=[128, 128, 128], networks=NETWORKS, batches=[1], precisions=["fp32", "amp"],
                               repeats=3, tom_kinds=[], device="cuda")


def chunk_times(backend: str, chunks: tuple[int, ...], length: int = 262144, d_model: int = 48) -> dict[int, float]:
    """Seconds of one scan fwd+bwd (one direction, E = 2 d_model) at each chunk size, to choose
    the defaults."""
    times = {}
    for chunk in chunks:
        call = make_call("scan", backend, length, d_model, "cuda", backward=True, chunk_size=chunk)
        times[chunk] = median_time(lambda call=call: call().float().sum().backward(), "cuda", repeats=2)
    return times


def measure_efficiency(out: Path, settings: list[efficiency.Settings]) -> dict:
    """Runs the efficiency benchmark for each settings, adds the rows to ``out/efficiency.json``."""
    path = out / "efficiency.json"
    results = json.loads(path.read_text()) if path.exists() else None
    for s in settings:
        new = efficiency.run(s)
        if results is None:
            results = new
        else:
            for section in ("networks", "steps", "operators"):
                results[section].extend(new[section])
            if s.networks:
                results["settings"] = new["settings"]  # the network run's size decides the 128^3 targets
    results["command"] = "python -m benchmarks.gpu_check"
    results["targets"] = report.targets(results)
    efficiency.write_tables(results, out)
    met = [t for t in results["targets"] if t["met"] is not None]
    return {"ok": not any("error" in r for r in results["steps"] + results["operators"]),
            "targets": {t["target"]: t["measured"] for t in met}}


def run_tom(out: Path) -> dict:
    result = measure_efficiency(out, tom_settings())
    result["pure_scan_s_by_chunk"] = chunk_times("pure", PURE_CHUNKS)
    result["triton_scan_s_by_chunk"] = chunk_times("triton", TRITON_CHUNKS)
    return result


def run_networks(out: Path) -> dict:
    return measure_efficiency(out, [network_settings()])


def scaled_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """max |value - reference| / max |reference| (the difference itself where the reference is 0)."""
    scale = reference.abs().max().item() or 1.0
    return (value - reference).abs().max().item() / scale


def ss2d_outputs_and_gradients(layer: SS2D, x: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """``layer(x)`` for x (B, H, W, C), and the gradients of sum(output * weights) with respect to
    x and to every parameter, by name ("output", "x", then the parameters' names)."""
    leaf = x.detach().clone().requires_grad_()
    out = layer(leaf)
    names, parameters = zip(*layer.named_parameters())
    grads = torch.autograd.grad((out * weights).sum(), [leaf, *parameters])
    return dict(zip(("output", "x", *names), (out.detach(), *grads)))


def compare_ss2d(fused: str, device: str, shape: tuple[int, int, int, int] = SS2D_INPUT) -> dict:
    """SS2D on its ``fused`` path ("triton" on a GPU; "numba" on a CPU) against its pure path,
    the same parameters and input x (B, H, W, C) = ``shape``: the output's and every gradient's
    :func:`scaled_error`, held to :data:`SS2D_TOLERANCE`."""
    torch.manual_seed(0)
    layers = {path: SS2D(shape[-1], backend=path).to(device) for path in (fused, "pure")}
    layers["pure"].load_state_dict(layers[fused].state_dict())
    x, weights = torch.randn(shape, device=device), torch.randn(shape, device=device)
    ours, pure = (ss2d_outputs_and_gradients(layers[p], x, weights) for p in (fused, "pure"))
    errors = {name: scaled_error(ours[name], pure[name]) for name in pure}
    gradients = {name: e for name, e in errors.items() if name != "output"}
    ok = errors["output"] <= SS2D_TOLERANCE["output"] and max(gradients.values()) <= SS2D_TOLERANCE["gradient"]
    return {"ok": ok, "fused": fused, "input": list(shape), "output_error": errors["output"],
            "gradient_errors": gradients}


def run_ss2d(out: Path) -> dict:
    return compare_ss2d("triton", "cuda")


def swin2d_settings() -> efficiency.Settings:
    """Swin-UMamba's two networks and nnU-Net's at 512 x 512, batch 2, AMP: training step and its
    peak memory. No MACs: they are the same on any machine (the CPU runs count them)."""
    return efficiency.Settings(size=[512, 512], networks=SWIN_2D_NETWORKS, batches=[2], precisions=["amp"],
                               repeats=3, tom_kinds=[], device="cuda", macs=False)


def run_swin2d(out: Path) -> dict:
    """:func:`swin2d_settings` measured, its tables in ``out/swin2d/``; ok where every step ran and
    the Swin-UMamba networks' SS2D layers took a fast GPU path."""
    results = efficiency.run(swin2d_settings())
    results["command"] = "python -m benchmarks.gpu_check --parts swin2d"
    efficiency.write_tables(results, out / "swin2d")
    steps = {r["network"]: {k: v for k, v in r.items() if k not in ("network", "batch", "precision")}
             for r in results["steps"]}
    fast = all(took_fast_paths(steps[n].get("tom_paths")) for n in efficiency.BASELINES_2D)
    return {"ok": fast and not any("error" in r for r in steps.values()), "steps": steps}


def run_memory_modes(out: Path) -> dict:
    """SegResMamba's memory modes at 128^3, batch 1 and 2, AMP, in ``out/memory_modes/``; ok where
    every step ran on a fast GPU path (Triton or mamba_ssm); with each of issue 20's targets met
    or missed (:data:`benchmarks.memory_modes.TARGETS`)."""
    from benchmarks import memory_modes  # imports nnunetv2's trainers, which this part checks for first

    rows = memory_modes.run([memory_modes.TARGET_SIZE], [1, 2], list(memory_modes.MODES), 3, "cuda", "amp",
                            out / "memory_modes", "python -m benchmarks.gpu_check --parts memory_modes")
    measured = [r for r in rows if "error" not in r]
    fast = all(took_fast_paths(r["tom_paths"]) for r in measured)
    paths = sorted({path for r in measured for path in r["tom_paths"]})
    return {"ok": len(measured) == len(rows) and fast, "tom_paths": paths, "targets": memory_modes.judge(rows)}


def run_train(out: Path) -> dict:
    from nnunetv2_segresmamba.discovery import activate
    from nnunetv2_segresmamba.operators.backends import PATH_LOG_VAR
    from nnunetv2_segresmamba.tools.demo import run_demo

    activate()  # nnUNet_extTrainer for the CLI's processes, where no .pth hook was installed
    paths_log = out / "paths.jsonl"
    paths_log.unlink(missing_ok=True)
    os.environ[PATH_LOG_VAR] = str(paths_log)  # the CLI's processes log the ToM paths they choose
    try:
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_demo(os.path.join(tmp, "demo"), device="cuda")
            logs = sorted(Path(tmp).rglob("training_log_*.txt"))
            log = logs[-1].read_text() if logs else ""
    finally:
        del os.environ[PATH_LOG_VAR]
    (out / "train.log").write_text(log)
    losses = [float(v) for v in re.findall(r"train_loss (\S+)", log)]
    predict_paths = fused_paths_at_predict(paths_log)
    return {"ok": bool(losses) and all(math.isfinite(v) for v in losses) and predict_paths <= GPU_FAST_PATHS
            and bool(predict_paths), "train_losses": losses, "predict_paths": sorted(predict_paths),
            "mean_dice": {k: v["Dice"] for k, v in summary["mean"].items()}}


def fused_paths_at_predict(paths_log: Path) -> set[str]:
    """The ToM paths that nnUNetv2_predict chose on the GPU under inference mode."""
    records = [json.loads(line) for line in paths_log.read_text().splitlines()] if paths_log.exists() else []
    return {r["path"] for r in records
            if r["process"] == "nnUNetv2_predict" and r["device"].startswith("cuda") and r["inference_mode"]}


PARTS = (
    Part("tests", ("triton", "pytest"), run_tests),
    Part("tom", ("triton",), run_tom),
    Part("ss2d", ("triton",), run_ss2d),
    Part("networks", ("monai", "dynamic_network_architectures", "nnunetv2"), run_networks),  # nnU-Net plans pools
    Part("swin2d", ("monai", "dynamic_network_architectures"), run_swin2d),
    Part("memory_modes", TRAINER_PACKAGES, run_memory_modes),
    Part("train", NNUNET_PACKAGES, run_train),
)


def run_part(part: Part, out: Path) -> dict:
    absent = missing(part.needs)
    if absent:
        return {"ok": False, "skipped": f"missing {', '.join(absent)}: {WHEELS_HINT}"}
    start = time.perf_counter()
    try:
        result = part.run(out)
    except Exception as err:  # noqa: BLE001 - one part's failure is reported, the next part runs
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    return {**result, "seconds": round(time.perf_counter() - start, 1)}


def markdown(checks: dict) -> str:
    lines = [f"# GPU check on {checks['machine'].get('gpu')}", "", f"torch {torch.__version__}, "
             f"triton {checks['triton']}, mamba_ssm {'loads' if checks['mamba_ssm'] else 'absent'}", "",
             "| part | ok | seconds | detail |", "| --- | --- | --- | --- |"]
    for name, result in checks["parts"].items():
        detail = {k: v for k, v in result.items() if k not in ("ok", "seconds")}
        lines.append(f"| {name} | {result['ok']} | {result.get('seconds', '')} | `{json.dumps(detail)}` |")
    tables = "efficiency.md, swin2d/efficiency.md, memory_modes/memory_modes.md"
    return "\n".join(lines) + f"\n\nTargets and tables: {tables}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], default=[p.name for p in PARTS])
    parser.add_argument("--out", type=Path, help="output folder, this check's files there replaced "
                        "(default: a new folder benchmarks/results/runs/<date>-<time>-<gpu>)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("The GPU check needs a CUDA GPU and a CUDA build of torch; none is visible here.", file=sys.stderr)
        return 2
    machine = describe()
    out = args.out or new_run_folder(machine)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("efficiency.json", "efficiency.md"):  # parts 2 and 3 add to this run's file only
        (out / stale).unlink(missing_ok=True)
    has_mamba_ssm = importlib.util.find_spec("mamba_ssm") is not None
    checks = {"machine": machine, "triton": triton_version(), "mamba_ssm": has_mamba_ssm, "parts": {}}
    for part in PARTS:
        if part.name in args.parts:
            print(f"[gpu_check] {part.name} ...", flush=True)
            checks["parts"][part.name] = run_part(part, out)
            print(f"[gpu_check] {part.name}: {json.dumps(checks['parts'][part.name])}", flush=True)
            write_atomically(out / "gpu_check.json", json.dumps(checks, indent=2))
            write_atomically(out / "gpu_check.md", markdown(checks))
    return 0 if all(r["ok"] for r in checks["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
