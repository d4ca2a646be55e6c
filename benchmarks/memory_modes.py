"""SegResMamba's training step in the memory modes of its trainers (issue 20): plain (AdamW),
``lowmem`` (activation checkpointing), ``GaLore`` (GaLore-AdamW at the trainers' rank, Linear and
conv weights wider than it projected) and both; each mode's peak training memory, median step
time and optimizer state, in processes of their own, as ratios to the plain step of the same run.
In fp32 on the CPU, where the peak is the resident set's (allocator slack included) and the
tensors' own peak is measured too; on a GPU (``--device cuda``, part ``memory_modes`` of
``benchmarks.gpu_check``) also with AMP (fp16 autocast and a GradScaler, as nnU-Net trains).

    python -m benchmarks.memory_modes --sizes 64 96 128 --batches 1 2 --repeats 3 \
        --out benchmarks/results/cpu-2core/memory_modes

With ``--demo-dice WORKDIR`` it runs the demo instead (``nnunetv2_segresmamba demo``: plan, train
5 x 24 steps, predict, evaluate) once per mode, with the mode's ``_demo`` trainer, and writes each
mode's mean Dice on the held-out cases beside plain AdamW's (``demo_dice.{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.isolate import PeakMemory, cpu_tensor_peak_mib, default_memory_cap_gib, run_isolated
from benchmarks.machine import describe, new_run_folder
from benchmarks.network_step import PRECISIONS, median_time, random_batch, recorded_tom_paths, training_step
from nnunetv2_segresmamba.operators.tom import MambaLayer
from nnunetv2_segresmamba.optimizers.galore import GaLoreAdamW
from nnunetv2_segresmamba.registry import network
from nnunetv2_segresmamba.tools.reporting import markdown_table
from nnunetv2_segresmamba.trainers.base import ComparisonTrainerBase
from nnunetv2_segresmamba.trainers.parameter_groups import galore_groups, parameter_groups

MODES = {"plain": (False, False), "lowmem": (True, False), "GaLore": (False, True), "lowmem_GaLore": (True, True)}


@dataclass(frozen=True)
class Target:
    """Issue 20's target: ``mode``'s ``key`` at 128^3, ``batch``, over the plain step's at
    ``plain_batch`` (the same batch when None) of the same run, at most ``limit``."""

    name: str
    mode: str
    batch: int
    key: str
    limit: float
    plain_batch: int | None = None


TARGETS = (
    Target("checkpointing's peak at 128^3, batch 1", "lowmem", 1, "peak_train_mib", 0.55),
    Target("checkpointing's tensors' peak at 128^3, batch 1 (CPU; a GPU's peak counts the same)", "lowmem", 1,
           "peak_tensors_mib", 0.55),
    Target("checkpointing's step time at 128^3, batch 1", "lowmem", 1, "step_s", 1.4),
    Target("GaLore's optimizer state", "GaLore", 1, "optimizer_state_mib", 0.35),
    Target("both at 128^3, batch 2, over plain at batch 1", "lowmem_GaLore", 2, "peak_train_mib", 1.0, 1),
)
COLUMNS = (("peak_train_mib", "peak MiB", ".0f"), ("peak_tensors_mib", "tensors' peak MiB (CPU)", ".0f"),
           ("step_s", "step s", ".2f"), ("optimizer_state_mib", "optimizer state MiB", ".0f"))  # key, label, format
TARGET_SIZE = 128
DEMO_DICE_TOLERANCE = 0.05  # a mode's demo Dice within this of plain AdamW's


def judge(rows: list[dict]) -> list[dict]:
    """Each of :data:`TARGETS` against ``rows``: its ratio and whether it is met (None where
    the rows lack a step it needs)."""
    measured = {(r["mode"], r["size"], r["batch"]): r for r in rows if "error" not in r}
    verdicts = []
    for target in TARGETS:
        row = measured.get((target.mode, TARGET_SIZE, target.batch))
        plain = measured.get(("plain", TARGET_SIZE, target.plain_batch or target.batch))
        ratio = None if target.key not in (row or {}) or target.key not in (plain or {}) \
            else row[target.key] / plain[target.key]
        verdicts.append({"target": target.name, "limit": target.limit, "ratio": ratio,
                         "met": None if ratio is None else ratio <= target.limit})
    return verdicts


def targets_table(rows: list[dict]) -> list[str]:
    def verdict(v: dict) -> str:
        return "not measured" if v["met"] is None else ("met" if v["met"] else "missed")

    return markdown_table(["target (ratio to plain)", "at most", "measured", ""],
                          [[v["target"], f"{v['limit']:.2f}", "-" if v["ratio"] is None else f"{v['ratio']:.3f}",
                            verdict(v)] for v in judge(rows)])


def load_scan_kernels() -> None:
    """Loads (and on first use compiles) the ToM's numba kernels with a tiny forward and backward
    pass: about 140 MiB once per process, the same for every mode, which is not training memory."""
    layer = MambaLayer(16)
    layer(torch.randn(1, 16, 2, 2, 2, requires_grad=True)).sum().backward()


def measure_mode(mode: str, size: int, batch: int, repeats: int, device: str = "cpu", precision: str = "fp32",
                 classes: int = 14) -> dict:
    """One mode's training step (cross-entropy, backward, optimizer step) at ``size``^3 on ``device``
    in ``precision``: peak memory from before the network is built (on the CPU, the scan kernels
    loaded before), median time after a warm-up step, the optimizer state's bytes, and the scan
    paths the ToMs took (``tom_paths``). On the CPU also the tensors' own peak
    (``peak_tensors_mib``, :func:`~benchmarks.isolate.cpu_tensor_peak_mib`, in one more step)."""
    with recorded_tom_paths() as paths:
        return {**_measure_mode(mode, size, batch, repeats, device, precision, classes), "tom_paths": paths()}


def _measure_mode(mode: str, size: int, batch: int, repeats: int, device: str, precision: str, classes: int) -> dict:
    checkpointing, galore = MODES[mode]
    if device == "cpu":
        load_scan_kernels()
    torch.manual_seed(0)
    memory = PeakMemory(device)
    memory.reset()
    net = network("SegResMamba").build(1, classes, [size] * 3, checkpointing=checkpointing).to(device)
    groups = parameter_groups(net, 1e-5)
    if galore:
        t = ComparisonTrainerBase
        optimizer = GaLoreAdamW(galore_groups(net, groups, t.galore_rank, t.galore_update_proj_gap, t.galore_scale),
                                lr=1e-4)
    else:
        optimizer = torch.optim.AdamW(groups, lr=1e-4)
    x, target = random_batch(batch, 1, classes, [size] * 3, device)
    step = training_step(net, optimizer, x, target, device, precision)
    seconds = median_time(step, device, repeats)
    peak = memory.mib()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor) and t.dim() > 0)
    row = {"mode": mode, "size": size, "batch": batch, "device": device, "precision": precision,
           "peak_train_mib": peak, "step_s": seconds, "optimizer_state_mib": state / 2**20}
    if device == "cpu":  # one more step, profiled (the gradients of the last are freed as it starts)
        weights = sum(p.numel() * p.element_size() for p in net.parameters())
        row["peak_tensors_mib"] = cpu_tensor_peak_mib(step, weights + state + x.nbytes + target.nbytes)
    return row


def table(rows: list[dict]) -> list[str]:
    plain = {(r["size"], r["batch"]): r for r in rows if r["mode"] == "plain" and "error" not in r}

    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]

    def cells(r: dict) -> list[str]:
        if "error" in r:
            return ["error: " + r["error"]]
        base = plain.get((r["size"], r["batch"]))
        return [f for k, _, fmt in columns for f in (format(r[k], fmt),
                                                      "-" if base is None else f"{r[k] / base[k]:.2f}")]

    return markdown_table(["size", "batch", "mode", *(h for _, label, _ in columns for h in (label, "/ plain"))],
                          [[f"{r['size']}^3", str(r["batch"]), r["mode"], *cells(r)] for r in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="amp: fp16 autocast, on CUDA only")
    parser.add_argument("--out", type=Path, help="output folder, its files of the same names replaced "
                        "(default: a new folder benchmarks/results/runs/<date>-<time>-<machine>)")
    parser.add_argument("--demo-dice", type=Path, metavar="WORKDIR",
                        help="run the demo once per mode in WORKDIR/<mode> (a new folder) instead, for its Dice")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m benchmarks.memory_modes " + " ".join(argv)
    step_options = {"--sizes", "--batches", "--repeats", "--precision"} & {a.split("=")[0] for a in argv}
    if args.demo_dice and step_options:
        parser.error(f"--demo-dice runs the demo with its own patch and schedule; {', '.join(sorted(step_options))} "
                     "set the measured step: leave them out")
    if args.precision == "amp" and args.device != "cuda":
        parser.error("--precision amp is nnU-Net's GPU training (fp16 autocast, GradScaler): use it with --device cuda")
    out = args.out or new_run_folder(describe())
    if args.demo_dice:
        run_demo_dice(args.modes, args.demo_dice, out, command, args.device)
        return
    run(args.sizes, args.batches, args.modes, args.repeats, args.device, args.precision, out, command)


def demo_trainer(mode: str) -> str:
    """The demo's trainer in ``mode``, e.g. ``nnUNetTrainerSegResMamba_GaLore_demo``."""
    return "nnUNetTrainerSegResMamba" + ("" if mode == "plain" else f"_{mode}") + "_demo"


def run_demo_dice(modes: list[str], workdir: Path, out: Path, command: str, device: str = "cpu") -> list[dict]:
    """The demo once per mode on ``device``, each in ``workdir/<mode>``; rows of mean Dice and
    seconds, written to ``out/demo_dice.{json,md}`` after each mode."""
    from nnunetv2_segresmamba.tools.demo import run_demo

    rows, machine = [], describe()
    for mode in modes:
        start = time.perf_counter()
        summary = run_demo(str(workdir / mode), trainer=demo_trainer(mode), device=device)
        rows.append({"mode": mode, "trainer": demo_trainer(mode), "mean_dice": summary["foreground_mean"]["Dice"],
                     "dice_per_class": {k: v["Dice"] for k, v in summary["mean"].items()},
                     "seconds": time.perf_counter() - start})
        write_demo_dice(rows, out, command, machine)
    return rows


def write_demo_dice(rows: list[dict], out: Path, command: str, machine: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_dice.json").write_text(json.dumps({"machine": machine, "command": command, "rows": rows},
                                                   indent=2))
    plain = next((r["mean_dice"] for r in rows if r["mode"] == "plain"), None)

    def versus_plain(dice: float) -> list[str]:
        if plain is None:
            return ["-", "-"]
        return [f"{dice - plain:+.3f}", "yes" if abs(dice - plain) <= DEMO_DICE_TOLERANCE else "no"]

    table_rows = [[r["mode"], r["trainer"], f"{r['mean_dice']:.3f}", *versus_plain(r["mean_dice"]),
                   f"{r['seconds']:.0f}"] for r in rows]
    (out / "demo_dice.md").write_text("\n".join([
        "# The demo's mean Dice (held-out cases) per memory mode", "", f"Command: `{command}`", "",
        *markdown_table(["mode", "trainer", "mean Dice", "- plain", f"within {DEMO_DICE_TOLERANCE} (issue 20)",
                         "seconds (plan, train, predict)"], table_rows),
        ""]))


def run(sizes: list[int], batches: list[int], modes: list[str], repeats: int, device: str, precision: str,
        out: Path, command: str) -> list[dict]:
    """Every mode at every size and batch, each in a process of its own; the rows, also written to
    ``out/memory_modes.{json,md}``."""
    rows = []
    for size in sizes:
        for batch in batches:
            for mode in modes:
                result = run_isolated(measure_mode, mode, size, batch, repeats, device, precision,
                                      memory_cap_gib=default_memory_cap_gib() if device == "cpu" else None)
                rows.append({"mode": mode, "size": size, "batch": batch, **result})
                print(rows[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": describe(), "command": command, "device": device, "precision": precision, "rows": rows}
    (out / "memory_modes.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, out)
    return rows


def write_markdown(results: dict, out: Path) -> None:
    """``out/memory_modes.md`` from the results of :func:`run`: the table, and issue 20's targets."""
    machine, rows = results["machine"], results["rows"]
    where = machine.get("gpu") if results["device"] == "cuda" else f"{machine['cpu']}, {machine['cores']} cores"
    title = f"# SegResMamba's memory modes, {results['precision']}, {where}, torch {machine['torch']}"
    (out / "memory_modes.md").write_text("\n".join([
        title, "", f"Command: `{results['command']}`", "", *table(rows), "",
        "Issue 20's targets (ratios to the plain step of this run):", "", *targets_table(rows), ""]))


if __name__ == "__main__":
    main()
