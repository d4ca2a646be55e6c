"""The paper's efficiency tables, every network of the comparison family and the baselines
(:data:`NETWORKS` for a 3D patch, :data:`NETWORKS_2D` for a 2D one) measured side by side in one run:

- parameters and fvcore-style MACs (Table 7), see :mod:`benchmarks.model_cost`;
- peak memory of one training step at each batch size and precision (Table 8) and the
  step's median time, see :mod:`benchmarks.network_step`;
- median inference time per patch at batch 1 (Table 1);
- the ToM layer (and the bare scan) against mambapy, see :mod:`benchmarks.scan_operator`.

Each measurement runs in its own process. Writes ``efficiency.json``, ``efficiency.md``
(tables beside the paper's, ratios to SegResMamba, the targets) and PNG plots to
a new folder ``benchmarks/results/runs/<date>-<time>-<machine>/``, or the folder ``--out`` names (the
committed results are written only so). A 2D patch (``--size H W``) measures the members that build
2D networks, Swin-UMamba's among them, and adds their ratios to nnU-Net's (see :mod:`benchmarks.report`);
a network that does not take the patch gets error rows. Usage::

    python -m benchmarks.efficiency                  # 128^3, 1 -> 14, batch 1 and 2, fp32 and AMP
    python -m benchmarks.efficiency --quick          # smoke test of every case kind, minutes on a CPU
    python -m benchmarks.efficiency --size 64 64 64 --repeats 1 --leaderboard sweep/leaderboard.csv
    python -m benchmarks.efficiency --size 256 256 --batches 1 --precisions fp32 --tom-kinds   # 2D networks
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks import report
from benchmarks.isolate import default_memory_cap_gib, describe_failure, run_isolated
from benchmarks.machine import describe, new_run_folder
from benchmarks.model_cost import PATCH_DIMS, count_row
from benchmarks.network_step import PRECISIONS, measure_network
from benchmarks.scan_operator import BACKENDS, KINDS, fp32_rate, operator_row
from nnunetv2_segresmamba import registry
from nnunetv2_segresmamba.registry import FAMILY, Member, members
from nnunetv2_segresmamba.tools.layout import write_atomically

# The baselines measured by default: one ResEnc preset, as M, L and XL build the same network for a
# given patch (they differ only in the patch and batch they plan), and U-Mamba Bot and Enc with
# their No-Mamba control (an ablation), which the U-Mamba targets compare them with.
BASELINES = ["nnU-Net ResEnc M", "U-Mamba Bot", "U-Mamba Enc", "U-Mamba Bot-NoMamba"]
# the 2D-only baselines: Swin-UMamba's two networks (their -Scratch ablations build the same networks)
BASELINES_2D = [m.network for m in members(registry.BASELINE) if m.spatial_dims == registry.ONLY_2D]


def default_networks(size: Sequence[int]) -> list[str]:
    """The networks measured by default at a patch of ``size`` (2 or 3 axes): the comparison five
    and the baselines that build networks of that dimensionality; the other ablations by name."""
    candidates = [*(m.network for m in members()), *BASELINES, *BASELINES_2D]
    return [n for n in candidates if len(size) in registry.network(n).spatial_dims]


NETWORKS = default_networks([128, 128, 128])  # the five, ResEnc M, U-Mamba Bot, Enc and No-Mamba
NETWORKS_2D = default_networks([256, 256])  # the same but SegMamba (3D only), and Swin-UMamba's two


@dataclass
class Settings:
    size: list[int] = field(default_factory=lambda: [128, 128, 128])
    in_channels: int = 1
    classes: int = 14
    networks: list[str] | None = None  # None: default_networks(size)
    batches: list[int] = field(default_factory=lambda: [1, 2])
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    repeats: int = 3
    tom_kinds: list[str] = field(default_factory=lambda: ["tom", "scan"])
    tom_lengths: list[int] = field(default_factory=lambda: [4096, 32768, 262144])
    tom_d_models: list[int] = field(default_factory=lambda: [48, 96, 192])
    tom_backends: list[str] = field(default_factory=lambda: available_backends())
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    macs: bool = True  # count parameters and MACs (on the CPU for networks with scans; the same on every device)

    def __post_init__(self) -> None:
        if self.networks is None:
            self.networks = default_networks(self.size)


# the smallest patch every network trains at (SwinUNETR keeps 2 x 1 x 1 voxels at 1/32); fp32 only, as
# AMP would about double the run
QUICK = {"size": [64, 32, 32], "batches": [1], "precisions": ["fp32"], "repeats": 1, "tom_kinds": ["tom"],
         "tom_lengths": [4096], "tom_d_models": [48]}


def available_backends(device: str | None = None) -> list[str]:
    """Our pure scan always, our numba kernels on the CPU, our Triton kernels and mamba_ssm's
    on CUDA, and mambapy, each when it is installed."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    found = ["pure"]
    if device == "cpu" and importlib.util.find_spec("numba") is not None:
        found.insert(0, "numba")
    if device == "cuda" and importlib.util.find_spec("triton") is not None:
        found.insert(0, "triton")
    if device == "cuda" and importlib.util.find_spec("mamba_ssm") is not None:
        found.append("cuda")
    if importlib.util.find_spec("mambapy") is not None:
        found.append("mambapy")
    return found


Task = tuple[str, str, Callable[[], list[dict]]]  # (section, label, measure)


def plan(s: Settings) -> list[Task]:
    """Every measurement of the run, cheapest first within each section."""
    cap = None if s.device == "cuda" else default_memory_cap_gib()
    tasks: list[Task] = []
    for net in s.networks if s.macs else []:
        member = registry.network(net)
        tasks.append(("networks", f"{net} MACs",
                      lambda m=member: [count_row(m, s.in_channels, s.classes, s.size)]))
    for net in s.networks:
        refusal = size_error(registry.network(net), s.size)
        for batch in s.batches:
            for precision in s.precisions:
                def step(net=net, batch=batch, precision=precision, refusal=refusal) -> list[dict]:
                    if refusal:  # no process to start for a network that does not take the patch
                        result = {"error": refusal}
                    else:
                        result = run_isolated(measure_network, net, s.in_channels, s.classes, s.size, batch,
                                              precision, s.device, s.repeats, batch == 1, memory_cap_gib=cap)
                    return [{"network": net, "batch": batch, "precision": precision, **result}]
                tasks.append(("steps", f"{net} b{batch} {precision}", step))
    for kind in s.tom_kinds:
        for length in s.tom_lengths:
            for d_model in s.tom_d_models:
                for backend in s.tom_backends:
                    for backward in (False, True):
                        tasks.append(("operators", f"{kind} {backend} L={length} d={d_model}",
                                      lambda a=(kind, backend, length, d_model, s.device, backward, s.repeats):
                                      [operator_row(*a)]))
    return tasks


def size_error(member: Member, size: Sequence[int]) -> str | None:
    """Why ``member`` does not build a network for a patch of ``size`` (its dimensionality or its
    divisor: :meth:`Member.require_patch`), or None."""
    try:
        member.require_patch(size)
    except ValueError as err:
        return describe_failure(err)
    return None


def run(s: Settings, save: Callable[[dict], None] | None = None) -> dict:
    """Measures every case of ``plan(s)``; ``save`` gets the results after each case, so that
    a run that is stopped keeps what it measured (``progress`` says how far it got)."""
    tasks = plan(s)
    results = {"machine": describe(), "date": datetime.date.today().isoformat(), "settings": asdict(s),
               "command": "python -m benchmarks.efficiency " + shlex.join(sys.argv[1:]),
               "progress": {"done": 0, "planned": len(tasks)}, "networks": [], "steps": [], "operators": []}
    if any(kind.startswith("scan") for kind in s.tom_kinds):
        results["fp32_ops_per_s"] = fp32_rate(s.device)  # for the scan's arithmetic limit
    progress = tqdm(tasks, unit="case", dynamic_ncols=True)
    for section, label, measure in progress:
        progress.set_postfix_str(label)
        results[section].extend(measure())
        results["progress"]["done"] += 1
        results["targets"] = report.targets(results)
        if save:
            save(results)
    return results


def write_tables(results: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "efficiency.json", out_dir / "efficiency.md"
    write_atomically(json_path, json.dumps(results, indent=2))
    write_atomically(md_path, report.markdown(results))
    return [json_path, md_path]


def write(results: dict, out_dir: Path, leaderboard: Path | None) -> list[Path]:
    return [*write_tables(results, out_dir), *report.write_plots(results, out_dir, leaderboard)]


def parse_settings(argv: list[str] | None = None) -> tuple[Settings, Path | None, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Settings()
    parser.add_argument("--quick", action="store_true", help=f"smoke-test settings: {QUICK}")
    parser.add_argument("--size", type=int, nargs="+",
                        help="the patch: 3 values (3D; default 128 128 128) or 2 (2D)")
    parser.add_argument("--in-channels", type=int)
    parser.add_argument("--classes", type=int)
    parser.add_argument("--networks", nargs="+", choices=[m.network for m in FAMILY],
                        help=f"default for a 3D patch: {NETWORKS}; for a 2D patch: {NETWORKS_2D}")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS)
    parser.add_argument("--repeats", type=int, help=f"timed runs after one warm-up (default {d.repeats})")
    parser.add_argument("--tom-kinds", nargs="*", choices=KINDS,
                        help="the ToM layer, the bare scan, the scan on denormal inputs; none: networks only")
    parser.add_argument("--tom-lengths", type=int, nargs="+")
    parser.add_argument("--tom-d-models", type=int, nargs="+")
    parser.add_argument("--tom-backends", nargs="+", choices=BACKENDS)
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, help="output folder, its files of the same names replaced "
                        "(default: a new folder benchmarks/results/runs/<date>-<time>-<machine>)")
    parser.add_argument("--leaderboard", type=Path, help="a sweep's leaderboard.csv, for memory_vs_dice.png")
    args = vars(parser.parse_args(argv))
    quick, out, leaderboard = args.pop("quick"), args.pop("out"), args.pop("leaderboard")
    chosen = {**(QUICK if quick else {}), **{k: v for k, v in args.items() if v is not None}}
    if "device" in chosen and "tom_backends" not in chosen:
        chosen["tom_backends"] = available_backends(chosen["device"])
    settings = Settings(**chosen)
    _check(settings)
    return settings, out, leaderboard


def _check(s: Settings) -> None:
    if len(s.size) not in PATCH_DIMS:
        raise SystemExit(f"--size takes 2 values (a 2D patch) or 3 (a 3D patch), got {s.size}")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch sees no CUDA device; leave --device out to measure on the CPU")
    if "cuda" in s.tom_backends and s.device != "cuda":
        raise SystemExit("--tom-backends cuda needs --device cuda (mamba_ssm's kernels run on CUDA only)")
    if s.repeats < 1:
        raise SystemExit("--repeats must be at least 1")


def main(argv: list[str] | None = None) -> None:
    settings, out, leaderboard = parse_settings(argv)
    out = out or new_run_folder(describe())
    results = run(settings, save=lambda partial: write_tables(partial, out))
    for path in write(results, out, leaderboard):
        print(f"wrote {path}")
    print(report.markdown(results).split("## Targets")[1])


if __name__ == "__main__":
    main()
