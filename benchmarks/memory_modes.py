"""SegResMamba's training step in the memory modes of its trainers (issue 20): plain (AdamW),
``lowmem`` (activation checkpointing), ``GaLore`` (GaLore-AdamW at the trainers' rank, Linear and
conv weights wider than it projected) and both; each mode's peak training memory, median step
time and optimizer state, in processes of their own, as ratios to the plain step of the same run.

    python -m benchmarks.memory_modes --sizes 64 96 --batches 1 2 --out benchmarks/results/cpu-2core/memory_modes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.isolate import PeakMemory, default_memory_cap_gib, run_isolated
from benchmarks.machine import describe
from benchmarks.network_step import median_time
from nnunetv2_segresmamba.operators.tom import MambaLayer
from nnunetv2_segresmamba.optimizers.galore import GaLoreAdamW
from nnunetv2_segresmamba.registry import network
from nnunetv2_segresmamba.tools.reporting import markdown_table
from nnunetv2_segresmamba.trainers.base import ComparisonTrainerBase, galore_groups, parameter_groups

MODES = {"plain": (False, False), "lowmem": (True, False), "GaLore": (False, True), "lowmem_GaLore": (True, True)}


def load_scan_kernels() -> None:
    """Loads (and on first use compiles) the ToM's numba kernels with a tiny forward and backward
    pass: about 140 MiB once per process, the same for every mode, which is not training memory."""
    layer = MambaLayer(16)
    layer(torch.randn(1, 16, 2, 2, 2, requires_grad=True)).sum().backward()


def measure_mode(mode: str, size: int, batch: int, repeats: int, classes: int = 14) -> dict:
    """One mode's training step (cross-entropy, backward, optimizer step) at ``size``^3, in fp32 on
    the CPU: peak memory from before the network is built (the scan kernels loaded before), median
    time after a warm-up step, and the optimizer state's bytes."""
    checkpointing, galore = MODES[mode]
    load_scan_kernels()
    torch.manual_seed(0)
    memory = PeakMemory("cpu")
    memory.reset()
    net = network("SegResMamba").build(1, classes, [size] * 3, checkpointing=checkpointing)
    groups = parameter_groups(net, 1e-5)
    if galore:
        t = ComparisonTrainerBase
        optimizer = GaLoreAdamW(galore_groups(net, groups, t.galore_rank, t.galore_update_proj_gap, t.galore_scale),
                                lr=1e-4)
    else:
        optimizer = torch.optim.AdamW(groups, lr=1e-4)
    x, target = torch.randn(batch, 1, size, size, size), torch.randint(0, classes, (batch, size, size, size))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), target).backward()
        optimizer.step()

    seconds = median_time(step, "cpu", repeats)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor) and t.dim() > 0)
    return {"mode": mode, "size": size, "batch": batch, "peak_train_mib": memory.mib(), "step_s": seconds,
            "optimizer_state_mib": state / 2**20}


def table(rows: list[dict]) -> list[str]:
    plain = {(r["size"], r["batch"]): r for r in rows if r["mode"] == "plain" and "error" not in r}

    def ratio(r: dict, key: str) -> str:
        base = plain.get((r["size"], r["batch"]))
        return "-" if base is None or "error" in r else f"{r[key] / base[key]:.2f}"

    return markdown_table(
        ["size", "batch", "mode", "peak MiB", "/ plain", "step s", "/ plain", "optimizer state MiB", "/ plain"],
        [[f"{r['size']}^3", str(r["batch"]), r["mode"], *(["error: " + r["error"]] if "error" in r else [
            f"{r['peak_train_mib']:.0f}", ratio(r, "peak_train_mib"), f"{r['step_s']:.2f}", ratio(r, "step_s"),
            f"{r['optimizer_state_mib']:.0f}", ratio(r, "optimizer_state_mib")])] for r in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            for mode in args.modes:
                result = run_isolated(measure_mode, mode, size, batch, args.repeats,
                                      memory_cap_gib=default_memory_cap_gib())
                rows.append({"mode": mode, "size": size, "batch": batch, **result})
                print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": describe(), "command": "python -m benchmarks.memory_modes " + " ".join(argv or []),
               "rows": rows}
    (args.out / "memory_modes.json").write_text(json.dumps(results, indent=2))
    (args.out / "memory_modes.md").write_text("\n".join(["# SegResMamba's memory modes, fp32, CPU", "",
                                                          *table(rows), ""]))


if __name__ == "__main__":
    main()
