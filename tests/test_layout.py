"""The light helpers: atomic writes, the sweep job's commands, and what the sweep report imports."""

import subprocess
import sys

import pytest

from nnunetv2_segresmamba.registry import FAMILY, members
from nnunetv2_segresmamba.sweeps.jobs import FoldJob
from nnunetv2_segresmamba.tools.layout import write_atomically


def test_write_atomically_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "record.json"
    assert write_atomically(path, "old") == path
    write_atomically(str(path), "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "record.json"
    write_atomically(path, "old")
    with pytest.raises(TypeError):
        write_atomically(path, None)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_fold_job_commands_differ_only_in_their_flags():
    job = FoldJob("Dataset991_E2E", "3d_fullres", "nnUNetTrainerSegMamba", 2)
    fold = ["nnUNetv2_train", "Dataset991_E2E", "3d_fullres", "2", "-tr", "nnUNetTrainerSegMamba",
            "-p", "nnUNetPlans", "-device", "cpu"]
    assert job.train_command("cpu") == [*fold, "--npz", "--c"]
    assert job.validate_command("cpu") == [*fold, "--npz", "--val"]


def test_paper_figures_are_given_for_the_five_only():
    assert all(m.paper is not None and m.paper.params_m for m in members())
    assert all(m.paper is None for m in members("ablation"))
    assert len({m.network for m in FAMILY}) == len(FAMILY)


def test_the_sweep_report_imports_neither_torch_nor_nnunet_training():
    code = ("import sys, nnunetv2_segresmamba.sweeps.report, nnunetv2_segresmamba.sweeps.status; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('nnunetv2.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
