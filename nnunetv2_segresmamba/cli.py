"""``nnunetv2_segresmamba`` command: make-dataset, demo, trainer-dir."""

from __future__ import annotations

import argparse
import os
import sys


def _triple(kind):
    def parse(text: str):
        values = [kind(v) for v in text.replace("x", ",").split(",")]
        if len(values) != 3:
            raise argparse.ArgumentTypeError(f"expected 3 values like 32,48,48, got {text!r}")
        return tuple(values)

    return parse


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-id", type=int, default=990)
    parser.add_argument("--num-train", type=int, default=10)
    parser.add_argument("--num-test", type=int, default=2)
    parser.add_argument("--shape", type=_triple(int), default=(32, 48, 48), help="z,y,x voxels (default 32,48,48)")
    parser.add_argument("--spacing", type=_triple(float), default=(1.0, 1.0, 1.0),
                        help="z,y,x mm, e.g. 3,1,1 for anisotropic data")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--num-channels", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunetv2_segresmamba", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make-dataset", help="write a synthetic nnU-Net raw dataset")
    make.add_argument("--output", help="raw folder (default: $nnUNet_raw)")
    _add_dataset_args(make)
    make.set_defaults(func=_make_dataset)

    demo = sub.add_parser("demo", help="plan, train, predict and evaluate on the synthetic dataset")
    demo.add_argument("--workdir", default=os.path.join(os.getcwd(), "segresmamba_demo"),
                      help="new folder for nnUNet_raw/preprocessed/results (default ./segresmamba_demo)")
    demo.add_argument("--trainer", default="nnUNetTrainerSegResMamba_smoke")
    demo.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    demo.add_argument("--verbose", action="store_true", help="show the nnU-Net output of every step")
    _add_dataset_args(demo)
    demo.set_defaults(func=_demo)

    where = sub.add_parser("trainer-dir", help="print the folder to put in nnUNet_extTrainer by hand")
    where.set_defaults(func=_trainer_dir)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (OSError, FileExistsError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
