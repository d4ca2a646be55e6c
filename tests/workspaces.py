"""Test workspaces: one dataset planned by nnU-Net that several modules share, and freeing the
disk that the end-to-end modules fill."""

import glob
import os

from nnunetv2_segresmamba.tools.pipeline import Workspace, run_command
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset

# the end-to-end modules' dataset: 2 channels, 2 classes, (2, 1, 1) mm
E2E = SyntheticSpec(dataset_id=991, name="E2E", num_train=6, num_test=2, shape=(16, 32, 32), spacing=(2.0, 1.0, 1.0),
                    num_classes=2, num_channels=2)
CPU_PREDICT = ["-device", "cpu", "-npp", "1", "-nps", "1"]


def preprocess_e2e(root: str, verify: bool = False) -> Workspace:
    """E2E under ``root``, planned and preprocessed for 3d_fullres by nnU-Net (``verify``: after
    nnU-Net's check of the dataset, ``--verify_dataset_integrity``)."""
    ws = Workspace(root)
    make_dataset(ws.path("nnUNet_raw"), E2E)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", str(E2E.dataset_id), "-c", "3d_fullres", "-np", "2",
                 *(["--verify_dataset_integrity"] if verify else [])], ws.env, quiet=True)
    return ws


def fold_dir(ws: Workspace, trainer: str, configuration: str = "3d_fullres", fold: str = "0",
             spec: SyntheticSpec = E2E) -> str:
    return os.path.join(ws.path("nnUNet_results"), spec.folder_name, f"{trainer}__nnUNetPlans__{configuration}",
                        f"fold_{fold}")


# as nnU-Net plans a (3, 0.8, 0.8) mm dataset: anisotropic pools, 2d and 3d_fullres
ANISOTROPIC = SyntheticSpec(dataset_id=993, name="Aniso", num_train=2, num_test=0, shape=(20, 96, 80),
                            spacing=(3.0, 0.8, 0.8), num_classes=1)


RESENC_M = "nnUNetResEncUNetMPlans"  # the plans of nnU-Net's nnUNetPlannerResEncM


def plan_anisotropic(root: str) -> Workspace:
    """ANISOTROPIC under ``root``, with nnU-Net's fingerprint, its default plans and its ResEnc M
    plans (no preprocessing)."""
    ws = Workspace(root)
    make_dataset(ws.path("nnUNet_raw"), ANISOTROPIC)
    run_command(["nnUNetv2_extract_fingerprint", "-d", str(ANISOTROPIC.dataset_id), "-np", "1"], ws.env, quiet=True)
    for planner in ("ExperimentPlanner", "nnUNetPlannerResEncM"):
        run_command(["nnUNetv2_plan_experiment", "-d", str(ANISOTROPIC.dataset_id), "-pl", planner], ws.env,
                    quiet=True)
    return ws


def drop_checkpoints(root: str) -> None:
    """Deletes every ``.pth`` checkpoint under ``root``.

    One module of end-to-end tests writes many checkpoints, with their optimizer states. Logs,
    plans and summaries stay for a post-mortem.
    """
    for path in glob.glob(os.path.join(root, "**", "*.pth"), recursive=True):
        os.remove(path)


def record_member(fold_dir, trainer: str, plans: str = "nnUNetPlans") -> None:
    """What a trainer of ours writes into its fold folder when training starts: the member its
    class names (``tools.layout.write_member_record``), for fold folders a test makes by hand."""
    from nnunetv2_segresmamba import trainers
    from nnunetv2_segresmamba.tools.layout import write_member_record

    member = getattr(trainers, trainer).family_member(plans)
    write_member_record(fold_dir, trainer, member.network if member is not None else None)


def predict_in_process(ws: Workspace, trainer: str, configuration: str = "3d_fullres", fold: str = "0",
                       spec: SyntheticSpec = E2E, previous_stage: list | None = None) -> list:
    """``trainer``'s fold of ``spec`` predicts each test image in this process, without test-time
    mirroring: nnU-Net's predictor as nnUNetv2_predict sets it up (the trainer looked up by the
    name its run recorded, the network built from the run's plans, the checkpoint loaded), sliding
    windows, and the resampling back to each image's grid. A cascade's second stage takes the
    first's segmentations, in case order, as ``-prev_stage_predictions`` gives them. What a
    ``nnUNetv2_predict`` subprocess adds (its worker processes) is nnU-Net's own and runs in
    test_e2e.py. The segmentations, in case order."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(os.path.dirname(fold_dir(ws, trainer, configuration, fold, spec)),
                                                   (fold if fold == "all" else int(fold),), "checkpoint_final.pth")
    images = os.path.join(ws.path("nnUNet_raw"), spec.folder_name, "imagesTs")
    first_channels = glob.glob(os.path.join(images, "*_0000.nii.gz"))
    cases = sorted(os.path.basename(p)[:-len("_0000.nii.gz")] for p in first_channels)
    segmentations = []
    for i, case in enumerate(cases):
        files = [os.path.join(images, f"{case}_{c:04d}.nii.gz") for c in range(spec.num_channels)]
        image, properties = SimpleITKIO().read_images(files)
        # (1, z, y, x) float32, as nnU-Net's reader gives -prev_stage_predictions' files
        previous = None if previous_stage is None else previous_stage[i][None].astype("float32")
        segmentations.append(predictor.predict_single_npy_array(image, properties, previous))
    return segmentations
