"""The package's own commands: make-dataset writes a valid raw dataset; errors say what to do."""

import json
import os

import numpy as np
import pytest

from nnunetv2_segresmamba.cli import main
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset


def test_make_dataset_writes_nnunet_layout(tmp_path):
    spec = SyntheticSpec(dataset_id=7, num_train=3, num_test=1, shape=(16, 20, 24), spacing=(3.0, 1.0, 0.5),
                         num_classes=2, num_channels=2)
    folder = make_dataset(str(tmp_path), spec)
    meta = json.load(open(os.path.join(folder, "dataset.json")))
    assert meta["numTraining"] == 3 and meta["labels"] == {"background": 0, "class1": 1, "class2": 2}
    assert sorted(os.listdir(os.path.join(folder, "imagesTr")))[:2] == ["synthellipsoids_tr000_0000.nii.gz",
                                                                       "synthellipsoids_tr000_0001.nii.gz"]
    import SimpleITK as sitk

    label = sitk.ReadImage(os.path.join(folder, "labelsTr", "synthellipsoids_tr000.nii.gz"))
    assert label.GetSpacing() == (0.5, 1.0, 3.0)
    assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1, 2}
    with pytest.raises(FileExistsError):
        make_dataset(str(tmp_path), spec)


def test_missing_nnunet_raw_is_explained(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["make-dataset"]) == 1
    assert "export nnUNet_raw=" in capsys.readouterr().err


def test_demo_refuses_a_used_workdir(tmp_path, capsys):
    (tmp_path / "something").write_text("results")
    assert main(["demo", "--workdir", str(tmp_path)]) == 1
    assert "never overwrites" in capsys.readouterr().err


def test_a_configuration_of_neither_2d_nor_3d_patches_is_refused():
    """A 3D-only trainer asked for 2d: test_trainers.py, with the trainer nnU-Net makes."""
    from nnunetv2_segresmamba.trainers.base import require_supported_configuration

    require_supported_configuration([64, 64], "2d", "nnUNetTrainerSegResMamba")  # 2D and 3D
    with pytest.raises(ValueError, match="Use a 2d or 3D configuration"):
        require_supported_configuration([8, 64, 64, 2], "4d", "nnUNetTrainerSegResMamba")
