"""``nnunetv2_segresmamba`` command: make-dataset, demo, trainer-dir, add-cascade, check-vmamba, sweep, status,
report, evaluate."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _triple(kind):
    def parse(text: str):
        values = [kind(v) for v in text.replace("x", ",").split(",")]
        if len(values) != 3:
            raise argparse.ArgumentTypeError(f"expected 3 values like 32,48,48, got {text!r}")
        return tuple(values)

    return parse


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The fields of :class:`SyntheticSpec` as options, with its defaults."""
    from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec

    d = SyntheticSpec()
    parser.add_argument("--dataset-id", type=int, default=d.dataset_id)
    parser.add_argument("--num-train", type=int, default=d.num_train)
    parser.add_argument("--num-test", type=int, default=d.num_test)
    parser.add_argument("--shape", type=_triple(int), default=tuple(d.shape),
                        help=f"z,y,x voxels (default {','.join(map(str, d.shape))})")
    parser.add_argument("--spacing", type=_triple(float), default=tuple(d.spacing),
                        help="z,y,x mm, e.g. 3,1,1 for anisotropic data")
    parser.add_argument("--num-classes", type=int, default=d.num_classes)
    parser.add_argument("--num-channels", type=int, default=d.num_channels)
    parser.add_argument("--seed", type=int, default=d.seed)


def _spec(args: argparse.Namespace):
    from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec

    return SyntheticSpec(
        dataset_id=args.dataset_id, num_train=args.num_train, num_test=args.num_test, shape=args.shape,
        spacing=args.spacing, num_classes=args.num_classes, num_channels=args.num_channels, seed=args.seed,
    )


def _make_dataset(args: argparse.Namespace) -> None:
    from nnunetv2_segresmamba.tools.pipeline import require_nnunet_env
    from nnunetv2_segresmamba.tools.synthetic import make_dataset

    raw_dir = args.output or require_nnunet_env(("nnUNet_raw",))["nnUNet_raw"]
    print(make_dataset(raw_dir, _spec(args)))


def _demo(args: argparse.Namespace) -> None:
    from nnunetv2_segresmamba.tools.demo import run_demo

    run_demo(args.workdir, trainer=args.trainer, device=args.device, spec=_spec(args), verbose=args.verbose)


def _trainer_dir(args: argparse.Namespace) -> None:
    from nnunetv2_segresmamba.discovery import trainer_dir

    print(trainer_dir())


def _add_cascade(args: argparse.Namespace) -> None:
    from nnunetv2_segresmamba.tools.cascade import CASCADE, LOWRES, add_lowres_configuration

    plans = add_lowres_configuration(args.dataset, args.factor, args.plans)
    lowres = plans["configurations"][LOWRES]
    spacing = [round(float(s), 3) for s in lowres["spacing"]]
    print(f"{LOWRES}: spacing {spacing}, patch {list(lowres['patch_size'])}; {CASCADE} inherits 3d_fullres.\n"
          f"Next: nnUNetv2_preprocess -d {args.dataset} -c {LOWRES} -p {args.plans}, then train {LOWRES} (every "
          f"fold, or fold all) before {CASCADE} with the same -tr.")


def _check_vmamba(args: argparse.Namespace) -> None:
    from nnunetv2_segresmamba.networks.vmamba_weights import check_vmamba_file, vmamba_weights_path

    print(check_vmamba_file(args.path or vmamba_weights_path()))


def _sweep(args: argparse.Namespace) -> int:
    from nnunetv2_segresmamba.sweeps.executors import SlurmOptions
    from nnunetv2_segresmamba.sweeps.jobs import expand, require_plans
    from nnunetv2_segresmamba.sweeps.sweep import run_sweep
    from nnunetv2_segresmamba.tools.pipeline import require_nnunet_env

    env = require_nnunet_env()
    results = env["nnUNet_results"]
    jobs = expand(args.datasets, args.configurations, args.trainers, args.folds, args.plans)
    require_plans(jobs, env["nnUNet_preprocessed"])
    if args.test and not args.dry_run:
        from nnunetv2_segresmamba.sweeps.predict import record_test_sets

        record_test_sets(args.sweep_dir, sorted({j.dataset for j in jobs}), env["nnUNet_raw"])
    slurm = SlurmOptions(partition=args.partition, time_min=args.time_min, gpus=args.gpus, cpus=args.cpus,
                         mem_gb=args.mem_gb, array_parallelism=args.array_parallelism, account=args.account)
    return run_sweep(jobs, args.sweep_dir, results, args.executor, args.device, args.dry_run, args.wait,
                     args.local_gpus, slurm)


def _status(args: argparse.Namespace) -> int:
    from nnunetv2_segresmamba.sweeps.jobs import read_plan
    from nnunetv2_segresmamba.sweeps.predict import predict_jobs, read_test_sets
    from nnunetv2_segresmamba.sweeps.status import format_table, job_states
    from nnunetv2_segresmamba.tools.pipeline import require_nnunet_env

    jobs = read_plan(args.sweep_dir)
    if not jobs:
        raise ValueError(f"no sweep in {args.sweep_dir}: start one with nnunetv2_segresmamba sweep")
    results = require_nnunet_env(("nnUNet_results",))["nnUNet_results"]
    ensembles, notes = predict_jobs(jobs, args.sweep_dir, results, read_test_sets(args.sweep_dir))
    print(format_table(job_states([*jobs, *ensembles], args.sweep_dir, results)))
    for note in notes:
        print(note)
    return 0


def _report(args: argparse.Namespace) -> int:
    from nnunetv2_segresmamba.evaluation.folder import parse_tolerances
    from nnunetv2_segresmamba.sweeps.report import build_report
    from nnunetv2_segresmamba.tools.pipeline import require_nnunet_env

    results = Path(require_nnunet_env(("nnUNet_results",))["nnUNet_results"])
    tolerances = parse_tolerances(args.nsd_tolerance_mm, args.nsd_tolerances)
    for path in build_report(args.sweep_dir, results, args.out, args.allow_incomplete, tolerances, args.reference,
                             args.np):
        print(path)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from nnunetv2_segresmamba.evaluation.folder import evaluate_folder, parse_tolerances

    tolerances = parse_tolerances(args.nsd_tolerance_mm, args.nsd_tolerances)
    for path in evaluate_folder(args.reference, args.prediction, args.o, args.djfile, args.pfile, tolerances,
                                args.np, args.chill):
        print(path)
    return 0


def _add_tolerance_args(parser: argparse.ArgumentParser) -> None:
    from nnunetv2_segresmamba.evaluation.folder import DEFAULT_NSD_TOLERANCE_MM

    parser.add_argument("--nsd-tolerance-mm", nargs="+", metavar="MM|CLASS=MM",
                        help=f"NSD tolerance in mm: a number for every class (default {DEFAULT_NSD_TOLERANCE_MM}), "
                             "CLASS=MM for one class (its name in dataset.json), e.g. 2 liver=3")
    parser.add_argument("--nsd-tolerances", type=Path, metavar="JSON",
                        help='the same as a JSON file, e.g. {"default": 2, "liver": 3}; --nsd-tolerance-mm wins')


def _add_evaluate_parser(sub) -> None:
    evaluate = sub.add_parser(
        "evaluate", help="per-case Dice, HD95 (mm) and NSD of a prediction folder, like nnUNetv2_evaluate_folder",
        description="Writes OUT/cases.csv (case, class, dice, hd95_mm, nsd: one row per case and foreground label "
                    "or region) and OUT/summary.json. Spacing from each reference image. Empty reference and/or "
                    "prediction: Metrics Reloaded's rule (both empty: best values; one empty: worst, HD95 the "
                    "image diagonal), counted in the summary.")
    evaluate.add_argument("reference", type=Path, help="folder of reference segmentations (e.g. labelsTs)")
    evaluate.add_argument("prediction", type=Path, help="folder of predictions with the same file names")
    evaluate.add_argument("-o", type=Path, required=True, metavar="OUT",
                          help="new folder for cases.csv and summary.json")
    evaluate.add_argument("-djfile", type=Path, help="dataset.json (default: PREDICTION/dataset.json, which "
                                                       "nnUNetv2_predict writes)")
    evaluate.add_argument("-pfile", type=Path, help="plans.json, for its image reader (default: PREDICTION/plans.json "
                                                      "where present, else nnU-Net's reader for the file ending)")
    evaluate.add_argument("-np", type=int, default=1, help="processes, one case each (default %(default)s)")
    evaluate.add_argument("--chill", action="store_true", help="evaluate the predicted cases when some are missing")
    _add_tolerance_args(evaluate)
    evaluate.set_defaults(func=_evaluate)


def _add_sweep_parsers(sub) -> None:
    from nnunetv2_segresmamba.registry import ABLATION, BASELINE, DEFAULT_PLANS, members, network, trainer_label
    from nnunetv2_segresmamba.sweeps.executors import SlurmOptions
    from nnunetv2_segresmamba.tools.layout import REPORT_DIR

    resenc = network("nnU-Net ResEnc M")

    sweep = sub.add_parser("sweep", help="train datasets x configurations x trainers x folds, here or on SLURM",
                           description="Runs nnUNetv2_train for every job; done folds are skipped, interrupted "
                                       "ones resume with --c, nothing finished is overwritten.")
    sweep.add_argument("-d", "--datasets", nargs="+", required=True, help="dataset ids or names")
    sweep.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"])
    sweep.add_argument("-tr", "--trainers", nargs="+", default=[m.trainer for m in members()],
                       help="TRAINER or TRAINER:PLANS (on other plans than -p), e.g. "
                            f"{resenc.trainer}:{resenc.plans}; default: the comparison family's five; the baselines: "
                            + " ".join(trainer_label(m.trainer, m.plans) for m in members(BASELINE))
                            + "; the ablations: " + " ".join(m.trainer for m in members(ABLATION)))
    sweep.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    sweep.add_argument("-p", "--plans", default=DEFAULT_PLANS, help="plans of the trainers named without any "
                                                                         "(default %(default)s)")
    sweep.add_argument("--sweep-dir", type=Path, required=True, help="plan, logs and job records of this sweep")
    sweep.add_argument("--executor", choices=("local", "slurm"), default="local")
    sweep.add_argument("--device", choices=("cuda", "cpu", "mps"), default="cuda")
    sweep.add_argument("--dry-run", action="store_true", help="print what would run and stop")
    sweep.add_argument("--wait", action="store_true", help="slurm: wait until every job has ended")
    sweep.add_argument("--local-gpus", type=int, default=1, help="local: jobs at a time, one per GPU")
    sweep.add_argument("--test", action="store_true",
                       help="a test set: when all planned folds of a trainer are done, their ensemble predicts the "
                            "dataset's imagesTs (nnUNetv2_predict, on the same executor) into SWEEP_DIR/test; "
                            "the report evaluates it against labelsTs")
    d = SlurmOptions()
    slurm = sweep.add_argument_group("slurm")
    slurm.add_argument("--partition", default=d.partition)
    slurm.add_argument("--account", default=d.account)
    slurm.add_argument("--time-min", type=int, default=d.time_min, help="per job, minutes (default %(default)s)")
    slurm.add_argument("--gpus", type=int, default=d.gpus, help="per job (default %(default)s)")
    slurm.add_argument("--cpus", type=int, default=d.cpus,
                       help="per job; also sets nnUNet_n_proc_DA (default %(default)s)")
    slurm.add_argument("--mem-gb", type=float, default=d.mem_gb)
    slurm.add_argument("--array-parallelism", type=int, default=d.array_parallelism,
                       help="array tasks running at once (default %(default)s)")
    sweep.set_defaults(func=_sweep)

    status = sub.add_parser("status", help="state and log of every job of a sweep")
    status.add_argument("--sweep-dir", type=Path, required=True)
    status.set_defaults(func=_status)

    report = sub.add_parser("report", help="Dice per trainer across folds: CSV, markdown leaderboard, plots")
    report.add_argument("--sweep-dir", type=Path, required=True)
    report.add_argument("--out", type=Path, help=f"default: SWEEP_DIR/{REPORT_DIR}")
    report.add_argument("--allow-incomplete", action="store_true",
                        help="average over the folds present when some are missing (marked as incomplete); the "
                             "per-case statistics compare such a trainer on the cases it has")
    report.add_argument("--reference", metavar="TRAINER[:PLANS]",
                        help="the trainer the others are compared with, case by case (default: the sweep's first, "
                             "in the order of its -tr)")
    report.add_argument("-np", type=int, default=1, help="processes evaluating cases (default %(default)s)")
    _add_tolerance_args(report)
    report.set_defaults(func=_report)


def build_parser() -> argparse.ArgumentParser:
    from nnunetv2_segresmamba.registry import DEFAULT_PLANS
    from nnunetv2_segresmamba.tools.demo import DEMO_TRAINER

    parser = argparse.ArgumentParser(prog="nnunetv2_segresmamba", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make-dataset", help="write a synthetic nnU-Net raw dataset")
    make.add_argument("--output", help="raw folder (default: $nnUNet_raw)")
    _add_dataset_args(make)
    make.set_defaults(func=_make_dataset)

    demo = sub.add_parser("demo", help="plan, train, predict and evaluate on the synthetic dataset")
    demo.add_argument("--workdir", default=os.path.join(os.getcwd(), "segresmamba_demo"),
                      help="new folder for nnUNet_raw/preprocessed/results (default ./segresmamba_demo)")
    demo.add_argument("--trainer", default=DEMO_TRAINER, help="default: %(default)s")
    demo.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    demo.add_argument("--verbose", action="store_true", help="show the nnU-Net output of every step")
    _add_dataset_args(demo)
    demo.set_defaults(func=_demo)

    where = sub.add_parser("trainer-dir", help="print the folder to put in nnUNet_extTrainer by hand")
    where.set_defaults(func=_trainer_dir)

    cascade = sub.add_parser("add-cascade", help="add 3d_lowres and 3d_cascade_fullres to a planned dataset",
                             description="For datasets too small for nnU-Net to plan a cascade: plans 3d_lowres with "
                                         "the planner that made the plans, at a spacing coarsened as nnU-Net's planner "
                                         "coarsens it (the finest axes first, then all together), and adds "
                                         "3d_cascade_fullres, in nnUNet_preprocessed/DATASET/PLANS.json.")
    cascade.add_argument("-d", "--dataset", required=True, help="dataset id or name, planned already")
    cascade.add_argument("--factor", type=float, default=2.0,
                         help="the lowres median image has factor^3 fewer voxels than the 3d_fullres one; "
                              "where no axis is more than twice finer than another, the spacing is factor x the "
                              "3d_fullres one (default %(default)s)")
    cascade.add_argument("-p", "--plans", default=DEFAULT_PLANS)
    cascade.set_defaults(func=_add_cascade)

    from nnunetv2_segresmamba.networks.vmamba_weights import VMAMBA_FILE, VMAMBA_WEIGHTS_VAR

    vmamba = sub.add_parser("check-vmamba", help="check VMamba-Tiny's ImageNet checkpoint for the Swin-UMamba trainers",
                            description="Reads the checkpoint without running code from it, prints its SHA-256 and "
                                        "what each Swin-UMamba encoder takes from it; fails if a tensor is missing "
                                        "or misshapen.")
    vmamba.add_argument("path", nargs="?", help=f"the file ({VMAMBA_FILE}); default: ${VMAMBA_WEIGHTS_VAR}")
    vmamba.set_defaults(func=_check_vmamba)
    _add_sweep_parsers(sub)
    _add_evaluate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
