"""Test workspaces: one dataset planned by nnU-Net that several modules share, and freeing the
disk that the end-to-end modules fill."""

import glob
import os

from nnunetv2_segresmamba.tools.pipeline import Workspace, run_command
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset

# as nnU-Net plans a (3, 0.8, 0.8) mm dataset: anisotropic pools, 2d and 3d_fullres
ANISOTROPIC = SyntheticSpec(dataset_id=993, name="Aniso", num_train=2, num_test=0, shape=(20, 96, 80),
                            spacing=(3.0, 0.8, 0.8), num_classes=1)


def plan_anisotropic(root: str) -> Workspace:
    """ANISOTROPIC under ``root``, with nnU-Net's fingerprint and default plans (no preprocessing)."""
    ws = Workspace(root)
    make_dataset(ws.path("nnUNet_raw"), ANISOTROPIC)
    run_command(["nnUNetv2_extract_fingerprint", "-d", str(ANISOTROPIC.dataset_id), "-np", "1"], ws.env, quiet=True)
    run_command(["nnUNetv2_plan_experiment", "-d", str(ANISOTROPIC.dataset_id)], ws.env, quiet=True)
    return ws


def drop_checkpoints(root: str) -> None:
    """Deletes every ``.pth`` checkpoint under ``root``.

    One module of end-to-end tests writes many checkpoints, with their optimizer states. Logs,
    plans and summaries stay for a post-mortem.
    """
    for path in glob.glob(os.path.join(root, "**", "*.pth"), recursive=True):
        os.remove(path)
