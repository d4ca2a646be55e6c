"""Markdown tables laid out like the paper's, the targets (:data:`TARGETS`) as ratios, and PNG plots,
all from the dict that :mod:`benchmarks.efficiency` writes as JSON.

The paper's and nnU-Net Revisited's figures are for 3D patches, so the network targets hold for
3D runs only. A 2D run (Swin-UMamba's networks beside the others) adds every network's ratios to
:data:`BASELINE_2D` measured in the same run; the operator targets hold at any patch."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.isolate import CPU_MEMORY_SHARE
from benchmarks.scan_operator import FLOPS_PER_UPDATE, arithmetic_limit
from nnunetv2_segresmamba import registry
from nnunetv2_segresmamba.registry import PaperFigures
from nnunetv2_segresmamba.tools.reporting import (
    DiceMemoryPoint,
    fmt,
    gib,
    markdown_table,
    plot_dice_vs_memory,
    pyplot,
    save_figure,
)

REFERENCE = "SegResMamba"
NO_MAMBA = "U-Mamba Bot-NoMamba"  # U-Mamba's residual U-Net without its Mamba layers: the U-Mamba targets' control
BASELINE_2D = "nnU-Net"  # the reference of a 2D run's ratios, as in Swin-UMamba's and U-Mamba's papers
MET = {True: "yes", False: "NO", None: "not measured"}
NO_FIGURES = PaperFigures()


def paper(network: str) -> PaperFigures:
    """The paper's figures for ``network`` (see the registry); all None for the ablations and for
    a network outside the family."""
    try:
        return registry.network(network).paper or NO_FIGURES
    except KeyError:
        return NO_FIGURES


def paper_of(results: dict) -> Callable[[str], PaperFigures]:
    """:func:`paper` for a 3D run; for a 2D run no figures (the paper's are for 128^3 patches)."""
    return (lambda network: NO_FIGURES) if is_2d(results) else paper


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def step_value(results: dict, network: str, key: str, batch: int = 1, precision: str = "fp32") -> float | None:
    for row in results["steps"]:
        if (row["network"], row["batch"], row["precision"]) == (network, batch, precision):
            return row.get(key)
    return None


def operator_value(results: dict, key: str, backend: str, length: int, d_model: int, kind: str = "tom",
                   pass_: str = "fwd+bwd") -> float | None:
    for row in results["operators"]:
        if (row["kind"], row["backend"], row["L"], row["d_model"], row["pass"]) == (kind, backend, length, d_model,
                                                                                    pass_):
            return row.get(key)
    return None


def our_backend(results: dict) -> str:
    """The scan path this run measured as ours: the fused numba or Triton kernels where
    measured, else pure."""
    measured = {r["backend"] for r in results["operators"]}
    return next((b for b in ("numba", "triton") if b in measured), "pure")


def scan_limit_ratio(results: dict, backend: str, length: int = 32768, d_model: int = 96) -> float | None:
    """Time of the bare scan fwd+bwd over its arithmetic limit on this machine (same run)."""
    rate = results.get("fp32_ops_per_s")
    seconds = operator_value(results, "median_s", backend, length, d_model, "scan")
    if rate is None or seconds is None:
        return None
    return seconds / arithmetic_limit(length, d_model, "fwd+bwd", rate)


@dataclass(frozen=True)
class Target:
    """A ratio that this run is held to: ``measure(results, backend)`` against ``limit``."""

    name: str
    op: str  # "<=" or ">="
    limit: float
    source: str  # where the limit comes from
    measure: Callable[[dict, str], float | None]  # (results, our scan backend) -> ratio; None: not measured


def is_2d(results: dict) -> bool:
    """Whether the run measured 2D patches (a results dict without settings: 3D, the default)."""
    return len(results.get("settings", {}).get("size", (128, 128, 128))) == 2


def _in_3d(measure: Callable[[dict, str], float | None]) -> Callable[[dict, str], float | None]:
    """``measure`` where the run measured 3D patches, else None: a target from published 3D figures."""
    return lambda r, backend: None if is_2d(r) else measure(r, backend)


def _memory_ratio(other: str, network: str = REFERENCE) -> Callable[[dict, str], float | None]:
    return _in_3d(lambda r, _: _ratio(step_value(r, network, "peak_train_mib"), step_value(r, other, "peak_train_mib")))


def _inference_ratio(other: str) -> Callable[[dict, str], float | None]:
    return _in_3d(lambda r, _: _ratio(step_value(r, REFERENCE, "inference_s"), step_value(r, other, "inference_s")))


def _numba_inference_ratio(network: str, control: str) -> Callable[[dict, str], float | None]:
    """``network``'s inference time per patch over ``control``'s (batch 1, fp32), where every ToM
    layer of ``network`` ran the fused numba kernels (the step row's ``tom_paths``), else None."""
    def ratio(results: dict, _: str) -> float | None:
        if step_value(results, network, "tom_paths") != ["numba"]:
            return None
        return _ratio(step_value(results, network, "inference_s"), step_value(results, control, "inference_s"))

    return ratio


def _tom(key: str, backend: str, length: int = 32768, d_model: int = 96) -> Callable[[dict], float | None]:
    return lambda r: operator_value(r, key, backend, length, d_model)


def _gpu_tom_ratio(key: str, numerator: str, denominator: str) -> Callable[[dict, str], float | None]:
    """A ratio of the ToM layer's fwd+bwd at the full-resolution stage of 128^3 (L = 262144, d_model = 48)."""
    return lambda r, _: _ratio(_tom(key, numerator, 262144, 48)(r), _tom(key, denominator, 262144, 48)(r))


def _at_128_amp(measure: Callable[[dict], float | None]) -> Callable[[dict, str], float | None]:
    """``measure(results)`` where the run measured 128^3 patches on a GPU, else None."""
    def at_128_amp(results: dict, _: str) -> float | None:
        settings = results.get("settings", {})
        on_gpu_at_128 = settings.get("size") == [128, 128, 128] and settings.get("device") == "cuda"
        return measure(results) if on_gpu_at_128 else None

    return at_128_amp


def revisited_memory_ratio(network: str, other: str) -> float:
    """``network``'s training memory over ``other``'s in nnU-Net Revisited's table (the registry's figures)."""
    return registry.network(network).revisited.vram_gb / registry.network(other).revisited.vram_gb


UMAMBA_ENC_MEMORY_LIMIT = round(revisited_memory_ratio("U-Mamba Enc", "nnU-Net"), 2)  # 24.9 / 7.70 GB = 3.23


TARGETS: tuple[Target, ...] = (
    Target("peak training memory, SegResMamba / SegMamba (batch 1, fp32)", "<=", 0.4,
           "paper: under half SegMamba's (Table 8: 5.10 / 13.51 GB = 0.38)", _memory_ratio("SegMamba")),
    Target("peak training memory, SegResMamba / SwinUNETR (batch 1, fp32)", "<=", 0.7,
           "paper Table 8: 5.10 / 7.77 GB = 0.66", _memory_ratio("SwinUNETR")),
    Target("inference time per patch, SegResMamba / SegMamba (fp32)", "<=", 0.5,
           "paper Table 1: 0.0841 / 0.1693 s = 0.50", _inference_ratio("SegMamba")),
    Target("inference time per patch, SegResMamba / SwinUNETR (fp32)", "<=", 0.63,
           "paper Table 1: 0.0841 / 0.1343 s = 0.63", _inference_ratio("SwinUNETR")),
    Target("ToM fwd+bwd at L=32768, d_model=96: mambapy time / ours", ">=", 8.0,
           "project goal: the CPU scan well past the plain PyTorch reference",
           lambda r, b: _ratio(_tom("median_s", "mambapy")(r), _tom("median_s", b)(r))),
    Target("ToM fwd+bwd at L=32768, d_model=96: our peak memory / mambapy's", "<=", 0.1,
           "project goal: no (B, E, L, N) state tensor",
           lambda r, b: _ratio(_tom("peak_mib", b)(r), _tom("peak_mib", "mambapy")(r))),
    Target("scan fwd+bwd at L=32768, E=192: our time / the arithmetic limit", "<=", 3.0,
           "project goal: a CPU scan near the machine's limit", lambda r, b: scan_limit_ratio(r, b)),
    Target("scan fwd+bwd at L=32768, E=192: denormal inputs / ordinary inputs, time", "<=", 1.5,
           "project goal: decaying states cost no more than others",
           lambda r, b: _ratio(operator_value(r, "median_s", b, 32768, 96, "scan_denormal"),
                               operator_value(r, "median_s", b, 32768, 96, "scan"))),
    Target("ToM fwd+bwd at L=262144, d_model=48 on a GPU: pure time / Triton's", ">=", 20.0,
           "issue 9: a fast GPU path without a compiled extension", _gpu_tom_ratio("median_s", "pure", "triton")),
    Target("ToM fwd+bwd at L=262144, d_model=48 on a GPU: Triton time / mamba_ssm's", "<=", 1.5,
           "issue 9", _gpu_tom_ratio("median_s", "triton", "cuda")),
    Target("ToM fwd+bwd at L=262144, d_model=48 on a GPU: Triton peak memory / mamba_ssm's", "<=", 1.0,
           "issue 9", _gpu_tom_ratio("peak_mib", "triton", "cuda")),
    Target("training step at 128^3, batch 1, AMP: SegResMamba / nnU-Net", "<=", 1.2, "issue 9",
           _at_128_amp(lambda r: _ratio(step_value(r, "SegResMamba", "train_step_s", precision="amp"),
                                        step_value(r, "nnU-Net", "train_step_s", precision="amp")))),
    Target("peak training memory at 128^3, batch 1, AMP: SegResMamba, GiB", "<=", 5.1,
           "paper Table 8 (A100): 5.10 GB",
           _at_128_amp(lambda r: _ratio(step_value(r, "SegResMamba", "peak_train_mib", precision="amp"), 1024))),
    Target(f"inference time per patch, U-Mamba Bot / {NO_MAMBA} (fp32, numba path)", "<=", 1.2,
           "issue 18: U-Mamba's Mamba layer costs little beside its U-Net on the CPU's fused path",
           _numba_inference_ratio("U-Mamba Bot", NO_MAMBA)),
    Target(f"inference time per patch, U-Mamba Enc / {NO_MAMBA} (fp32, numba path)", "<=", 1.2,
           "issue 18: the same for a Mamba layer after every encoder stage",
           _numba_inference_ratio("U-Mamba Enc", NO_MAMBA)),
    Target("peak training memory, U-Mamba Enc / nnU-Net (batch 1, fp32)", "<=", UMAMBA_ENC_MEMORY_LIMIT,
           f"nnU-Net Revisited, Table 2 (A100, AMP, the same plans): 24.9 / 7.70 GB = {UMAMBA_ENC_MEMORY_LIMIT}",
           _memory_ratio("nnU-Net", "U-Mamba Enc")),
)


def targets(results: dict) -> list[dict]:
    """Every :data:`TARGETS` row measured on ``results`` with our scan backend; ``measured`` and
    ``met`` are None where this run did not measure the case."""
    backend = our_backend(results)
    rows = []
    for t in TARGETS:
        value = t.measure(results, backend)
        met = None if value is None else (value <= t.limit if t.op == "<=" else value >= t.limit)
        rows.append({"target": t.name, "backend": backend, "measured": value, "limit": f"{t.op} {t.limit}",
                     "met": met, "source": t.source})
    return rows


def markdown(results: dict) -> str:
    s = results["settings"]
    machine = results["machine"]
    lines = [
        f"# Efficiency on {machine_name(machine)}",
        "",
        f"torch {machine['torch']}{', CUDA ' + machine['cuda'] if machine.get('cuda') else ''}, "
        f"{machine['cores']} CPU cores ({machine['cpu']}). Patch {'x'.join(map(str, s['size']))}, "
        f"{s['in_channels']} -> {s['classes']} channels, medians of {s['repeats']} after a warm-up. "
        f"Paper: A100 40 GB, 128^3, 1 -> 14. Ratios are to {REFERENCE} in the same run.",
        f"Command: `{results['command']}`",
        *_progress_line(results),
        "", "## Parameters and MACs (paper Table 7)", "",
        *_cost_table(results),
        "", "## Peak training memory, MiB (paper Table 8, GB at batch 1)", "",
        *_memory_table(results),
        "", "## Time per patch, s (paper Table 1: inference)", "",
        *_time_table(results),
        *_baseline_2d_section(results),
        *_operator_section(results),
        "", "## Targets", "",
        "Ratios within this run" + (f"; our scan in the ToM and scan rows: {our_backend(results)}."
                                    if results["operators"] else ".")
        + (" The network targets come from 3D figures: not measured on this run's 2D patches." if is_2d(results)
           else ""), "",
        *markdown_table(["target", "measured", "limit", "met", "where the limit comes from"],
                [[t["target"], fmt(t["measured"]), t["limit"], MET[t["met"]], t["source"]]
                 for t in targets(results)]),
    ]
    errors = [r for r in results["networks"] + results["steps"] + results["operators"] if "error" in r]
    if errors:
        lines += ["", "## Cases that could not run", "",
                  *(f"- {_case(r)}: {_short_error(r['error'])}" for r in errors)]
    return "\n".join(lines) + "\n"


def _short_error(error: str) -> str:
    """PyTorch's CPU allocator failing under the child's address-space cap; other errors as they are."""
    if "can't allocate memory" in error:
        return (f"out of memory (the measuring process may use {CPU_MEMORY_SHARE:.0%} of RAM; "
                "see benchmarks/isolate.py)")
    return error


def _baseline_2d_section(results: dict) -> list[str]:
    """For a 2D run where :data:`BASELINE_2D` was measured: each network's MACs, training peak and
    step time (every batch and precision) and inference time (batch 1) over the baseline's."""
    measured = {r["network"] for r in results["networks"] + results["steps"] if "error" not in r}
    if not is_2d(results) or BASELINE_2D not in measured:
        return []
    # (key, batch, precision) of each ratio column after the MACs
    cases = [*((key, b, p) for b, p in _step_columns(results) for key in ("peak_train_mib", "train_step_s")),
             *(("inference_s", 1, p) for p in results["settings"]["precisions"])]
    names = {"peak_train_mib": "training peak", "train_step_s": "train step", "inference_s": "inference"}
    rows = [[net, fmt(_ratio(_macs(results, net), _macs(results, BASELINE_2D))),
             *(fmt(_ratio(step_value(results, net, *case), step_value(results, BASELINE_2D, *case))) for case in cases)]
            for net in results["settings"]["networks"]]
    header = ["network", "MACs", *(f"{names[key]} b{b} {p}" for key, b, p in cases)]
    return ["", f"## 2D patch: ratios to {BASELINE_2D} in this run", "", *markdown_table(header, rows)]


def _macs(results: dict, network: str) -> float | None:
    return next((r.get("macs") for r in results["networks"] if r["network"] == network), None)


def _operator_section(results: dict) -> list[str]:
    if not results["operators"]:
        return []
    return ["", "## ToM operator against mambapy", "", *_operator_table(results)]


def _progress_line(results: dict) -> list[str]:
    done, planned = results.get("progress", {}).get("done"), results.get("progress", {}).get("planned")
    if done is None or done == planned:
        return []
    return ["", f"**Partial run: {done} of {planned} cases measured.** Missing values are shown as -."]


def _case(row: dict) -> str:
    if "batch" not in row and "network" in row:
        return f"{row['network']} MACs"
    if "network" in row:
        return f"{row['network']} batch {row['batch']} {row['precision']}"
    return f"{row['kind']} {row['backend']} L={row['L']} d_model={row['d_model']} {row['pass']}"


def _cost_table(results: dict) -> list[str]:
    figures = paper_of(results)
    ref = _macs(results, REFERENCE)
    return markdown_table(
        ["network", "params (M)", "paper params (M)", "MACs (G)", "paper MACs (G)", "MACs / SegResMamba"],
        [[r["network"], fmt(_scaled(r.get("params"), 1e6)), fmt(figures(r["network"]).params_m),
          fmt(_scaled(r.get("macs"), 1e9)), fmt(figures(r["network"]).fvcore_macs_g),
          fmt(_ratio(r.get("macs"), ref))] for r in results["networks"]],
    )


def _step_columns(results: dict) -> list[tuple[int, str]]:
    return [(b, p) for b in results["settings"]["batches"] for p in results["settings"]["precisions"]]


def _memory_table(results: dict) -> list[str]:
    figures = paper_of(results)
    columns = _step_columns(results)
    ours_ref = step_value(results, REFERENCE, "peak_train_mib")
    rest_ref = _rest_mib(results, REFERENCE)
    paper_ref = figures(REFERENCE).train_memory_gb
    rows = []
    for net in results["settings"]["networks"]:
        ours = step_value(results, net, "peak_train_mib")
        rows.append([net, *(fmt(step_value(results, net, "peak_train_mib", b, p), 0) for b, p in columns),
                     fmt(optimizer_state_mib(results, net), 0), fmt(figures(net).train_memory_gb),
                     fmt(_ratio(ours, ours_ref)), fmt(_ratio(_rest_mib(results, net), rest_ref)),
                     fmt(_ratio(figures(net).train_memory_gb, paper_ref))])
    header = ["network", *(f"batch {b} {p}" for b, p in columns), "of which weights+grads+AdamW", "paper (GB)",
              "ours / SegResMamba (b1 fp32)", "rest / SegResMamba (b1 fp32)", "paper / SegResMamba"]
    return markdown_table(header, rows)


def optimizer_state_mib(results: dict, network: str) -> float | None:
    """fp32 weights, gradients and AdamW's two moments: 16 bytes per parameter."""
    params = next((r.get("params") for r in results["networks"] if r["network"] == network), None)
    return None if params is None else 16 * params / 2**20


def _rest_mib(results: dict, network: str) -> float | None:
    """Peak training memory (batch 1, fp32) less the optimizer state: mostly activations."""
    peak, state = step_value(results, network, "peak_train_mib"), optimizer_state_mib(results, network)
    return None if peak is None or state is None else peak - state


def _time_table(results: dict) -> list[str]:
    figures = paper_of(results)
    precisions = results["settings"]["precisions"]
    ours_ref = step_value(results, REFERENCE, "inference_s")
    rows = []
    for net in results["settings"]["networks"]:
        ours = step_value(results, net, "inference_s")
        rows.append([net, *(fmt(step_value(results, net, "inference_s", 1, p), 3) for p in precisions),
                     fmt(figures(net).inference_s, 4), fmt(_ratio(ours, ours_ref)),
                     fmt(_ratio(figures(net).inference_s, figures(REFERENCE).inference_s)),
                     *(fmt(step_value(results, net, "train_step_s", 1, p), 3) for p in precisions)])
    header = ["network", *(f"inference {p}" for p in precisions), "paper inference", "ours / SegResMamba (fp32)",
              "paper / SegResMamba", *(f"train step b1 {p}" for p in precisions)]
    return markdown_table(header, rows)


def _operator_table(results: dict) -> list[str]:
    cases = sorted({(r["kind"], r["L"], r["d_model"], r["backend"]) for r in results["operators"]},
                   key=lambda c: (c[0] != "tom", c[1], c[2], c[3]))
    rows = []
    for kind, length, d_model, backend in cases:
        values = {(p, k): operator_value(results, k, backend, length, d_model, kind, p)
                  for p in ("fwd", "fwd+bwd") for k in ("median_s", "peak_mib")}
        ref = {k: operator_value(results, k, "mambapy", length, d_model, kind) for k in ("median_s", "peak_mib")}
        rate = results.get("fp32_ops_per_s")
        limit = arithmetic_limit(length, d_model, "fwd+bwd", rate) if rate and kind.startswith("scan") else None
        rows.append([kind, str(length), str(d_model), backend, fmt(values["fwd", "median_s"], 3),
                     fmt(values["fwd", "peak_mib"], 0), fmt(values["fwd+bwd", "median_s"], 3),
                     fmt(values["fwd+bwd", "peak_mib"], 0),
                     fmt(_ratio(ref["median_s"], values["fwd+bwd", "median_s"])),
                     fmt(_ratio(values["fwd+bwd", "peak_mib"], ref["peak_mib"])),
                     fmt(_ratio(values["fwd+bwd", "median_s"], limit))])
    lines = markdown_table(["op", "L", "d_model", "backend", "fwd s", "fwd MiB", "fwd+bwd s", "fwd+bwd MiB",
                            "mambapy time / this (fwd+bwd)", "this memory / mambapy's (fwd+bwd)",
                            "this / arithmetic limit (fwd+bwd)"], rows)
    if results.get("fp32_ops_per_s"):
        lines += ["", f"Arithmetic limit of a scan: {FLOPS_PER_UPDATE['fwd+bwd']} fp32 operations per state "
                  f"update (fwd+bwd, exp counted as one) x L x E x N at "
                  f"{results['fp32_ops_per_s'] / 1e9:.0f} GFLOP/s, the rate of a 2048^2 fp32 matrix product "
                  "on this machine in the same run."]
    return lines


def machine_name(machine: dict) -> str:
    return machine.get("gpu") or f"CPU, {machine['cores']} cores"


def write_plots(results: dict, out_dir: Path, leaderboard: Path | None = None) -> list[Path]:
    """memory.png, time.png, tom.png (when the ToM layer was measured) and, given a sweep
    leaderboard CSV, memory_vs_dice.png."""
    written = [_plot_memory(results, out_dir), _plot_time(results, out_dir)]
    if _tom_rows(results):
        written.append(_plot_operator(results, out_dir))
    if leaderboard is not None:
        written.append(_plot_memory_vs_dice(results, leaderboard, out_dir))
    return written


def _grouped_bars(ax, networks: list[str], series: dict[str, list[float | None]]) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(networks))]
        ax.bar(xs, [v or 0 for v in values], width, label=label)
    ax.set_xticks(range(len(networks)), networks, rotation=20)
    ax.legend(fontsize=8)


def _plot_memory(results: dict, out_dir: Path) -> Path:
    figures = paper_of(results)
    networks = results["settings"]["networks"]
    series = {f"ours b{b} {p}": [gib(step_value(results, n, "peak_train_mib", b, p)) for n in networks]
              for b, p in _step_columns(results)}
    series["paper Table 8 (A100, 128^3, b1)"] = [figures(n).train_memory_gb for n in networks]
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    _grouped_bars(ax, networks, series)
    ax.set_ylabel("peak training memory (GiB)")
    ax.set_title(f"Training step memory, {_where(results)}")
    return save_figure(fig, out_dir / "memory.png")


def _plot_time(results: dict, out_dir: Path) -> Path:
    figures = paper_of(results)
    networks = results["settings"]["networks"]
    precisions = results["settings"]["precisions"]
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4.5))
    inference = {f"ours {p}": [step_value(results, n, "inference_s", 1, p) for n in networks] for p in precisions}
    inference["paper Table 1 (A100, 128^3)"] = [figures(n).inference_s for n in networks]
    _grouped_bars(left, networks, inference)
    left.set(yscale="log", ylabel="seconds per patch", title="Inference, batch 1")
    train = {f"ours b{b} {p}": [step_value(results, n, "train_step_s", b, p) for n in networks]
             for b, p in _step_columns(results)}
    _grouped_bars(right, networks, train)
    right.set(yscale="log", ylabel="seconds per step", title="Training step")
    fig.suptitle(_where(results))
    return save_figure(fig, out_dir / "time.png")


def _tom_rows(results: dict) -> list[dict]:
    return [r for r in results["operators"] if r["kind"] == "tom" and r["pass"] == "fwd+bwd" and "median_s" in r]


def _plot_operator(results: dict, out_dir: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    rows = _tom_rows(results)
    for backend, d_model in sorted({(r["backend"], r["d_model"]) for r in rows}):
        points = sorted((r["L"], r["median_s"]) for r in rows if (r["backend"], r["d_model"]) == (backend, d_model))
        ax.plot(*zip(*points), marker="o", label=f"{backend}, d_model {d_model}")
    ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="seconds, forward + backward",
           title=f"ToM layer, {machine_name(results['machine'])}")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir / "tom.png")


def _plot_memory_vs_dice(results: dict, leaderboard: Path, out_dir: Path) -> Path:
    """The paper's Figure 2 from a sweep's mean Dice (complete trainers only) and the training
    memory measured in this run."""
    with open(leaderboard) as f:
        rows = [r for r in csv.DictReader(f) if r.get("dice_mean") and r.get("complete") == "True"]
    if len({(r["dataset"], r["configuration"]) for r in rows}) > 1:
        raise ValueError(f"{leaderboard} covers several datasets or configurations; report one sweep at a time")
    points = []
    for r in rows:
        memory = gib(step_value(results, r["network"], "peak_train_mib"))
        if memory is not None:
            points.append(DiceMemoryPoint(r["network"], memory, float(r["dice_mean"]),
                                          float(r["dice_std"]) if r.get("dice_std") else None,
                                          f"{r['dataset']}, {r['configuration']}"))
    return plot_dice_vs_memory(points, out_dir / "memory_vs_dice.png",
                               xlabel="peak training memory, batch 1 fp32 (GiB)", ylabel="mean Dice (sweep)",
                               title=f"Dice vs training memory, {_where(results)}")


def _scaled(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit


def _where(results: dict) -> str:
    return f"{machine_name(results['machine'])}, {'x'.join(map(str, results['settings']['size']))}"

