"""Per-case boundary metrics against plain references in the test: a sphere and the same sphere
shifted by k voxels on an anisotropic grid of odd sizes, the empty cases, and the evaluate
command on NIfTI files (its CSV's columns, its summary's counts)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nnunetv2_segresmamba.evaluation.folder import CSV_COLUMNS, parse_tolerances
from nnunetv2_segresmamba.evaluation.metrics import BOTH_EMPTY, PRED_EMPTY, REF_EMPTY, binary_metrics, diagonal_mm

SHAPE, SPACING = (15, 33, 29), (3.0, 1.0, 0.8)  # z, y, x voxels; mm


def sphere(center_vox, radius_mm, shape=SHAPE, spacing=SPACING):
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    return ((grid - np.array(center_vox) * np.array(spacing)) ** 2).sum(-1) <= radius_mm ** 2


def edge_points_mm(mask, spacing=SPACING):
    """Voxels of the mask with a face neighbour outside it (or on the image's border), in mm."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner) * np.array(spacing)


def by_hand(ref, pred, tolerance_mm):
    """HD95 as the larger directed 95th percentile of edge-to-edge distances, and NSD as the
    fraction of both edges within the tolerance of the other, from all pairwise distances."""
    a, b = edge_points_mm(pred), edge_points_mm(ref)
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    a_to_b, b_to_a = distances.min(1), distances.min(0)
    hd95 = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    nsd = ((a_to_b <= tolerance_mm).sum() + (b_to_a <= tolerance_mm).sum()) / (len(a) + len(b))
    return hd95, nsd


@pytest.mark.parametrize("axis, k", [(0, 1), (0, 2), (1, 3), (2, 2)])
def test_shifted_sphere_matches_hand_computed_hd95_and_nsd(axis, k):
    center = [7, 16, 14]
    ref = sphere(center, 9.0)
    center[axis] += k
    pred = sphere(center, 9.0)
    m = binary_metrics(ref, pred, SPACING, tolerance_mm=2.0)
    hd95, nsd = by_hand(ref, pred, 2.0)
    assert m.hd95_mm == pytest.approx(hd95, rel=1e-5)
    assert m.nsd == pytest.approx(nsd, rel=1e-6)
    assert m.dice == pytest.approx(2 * (ref & pred).sum() / (ref.sum() + pred.sum()))
    assert 0 < m.hd95_mm <= k * SPACING[axis] + 1e-6  # a shift moves no surface point further than itself
    assert m.empty is None


def test_a_sphere_against_itself_is_perfect_and_spacing_matters():
    ref = sphere([7, 16, 14], 9.0)
    same = binary_metrics(ref, ref, SPACING, 1.0)
    assert (same.dice, same.hd95_mm, same.nsd) == (1.0, 0.0, 1.0)
    shifted = np.roll(ref, 2, axis=0)
    coarse, fine = (binary_metrics(ref, shifted, s, 1.0) for s in ((3.0, 1.0, 0.8), (0.5, 1.0, 0.8)))
    assert coarse.hd95_mm == pytest.approx(by_hand(ref, shifted, 1.0)[0], rel=1e-5)
    assert fine.hd95_mm < coarse.hd95_mm and fine.nsd > coarse.nsd


def test_empty_masks_follow_metrics_reloaded():
    empty, ball = np.zeros(SHAPE, bool), sphere([7, 16, 14], 6.0)
    both = binary_metrics(empty, empty, SPACING, 2.0)
    assert (both.dice, both.hd95_mm, both.nsd, both.empty) == (1.0, 0.0, 1.0, BOTH_EMPTY)
    worst = diagonal_mm(SHAPE, SPACING)
    assert worst == pytest.approx(np.sqrt(45.0 ** 2 + 33.0 ** 2 + 23.2 ** 2))
    for ref, pred, rule in ((empty, ball, REF_EMPTY), (ball, empty, PRED_EMPTY)):
        m = binary_metrics(ref, pred, SPACING, 2.0)
        assert (m.dice, m.hd95_mm, m.nsd, m.empty) == (0.0, worst, 0.0, rule)
        assert all(np.isfinite([m.dice, m.hd95_mm, m.nsd]))


def test_tolerances_parse_a_default_and_per_class_overrides(tmp_path):
    path = tmp_path / "tol.json"
    path.write_text(json.dumps({"default": 1.5, "liver": 4}))
    t = parse_tolerances(["spleen=3", "2.5"], path)
    assert (t.of("liver"), t.of("spleen"), t.of("kidney")) == (4.0, 3.0, 2.5)
    with pytest.raises(ValueError, match="CLASS=MM"):
        parse_tolerances(["liver:3"])
    with pytest.raises(ValueError, match="unknown classes"):
        t.require_classes(["kidney"])


def write_nifti(array, path, spacing=SPACING):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing([float(s) for s in reversed(spacing)])
    sitk.WriteImage(image, str(path))


def test_evaluate_command_writes_the_per_case_csv_and_counts_empty_cases(tmp_path):
    """Two cases, two labels: case a has label 1 shifted by 2 voxels along z and label 2 in both;
    case b has no label 2 anywhere (both empty) and label 1 predicted nowhere (prediction empty)."""
    ref_dir, pred_dir, out = tmp_path / "ref", tmp_path / "pred", tmp_path / "out"
    ref_dir.mkdir(), pred_dir.mkdir()
    one, two = sphere([5, 10, 10], 7.0), sphere([8, 24, 20], 5.0)
    write_nifti(one * 1 + two * 2, ref_dir / "a.nii.gz")
    write_nifti(np.roll(one, 2, axis=0) * 1 + two * 2, pred_dir / "a.nii.gz")
    write_nifti(one * 1, ref_dir / "b.nii.gz")
    write_nifti(np.zeros(SHAPE), pred_dir / "b.nii.gz")
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2},
                                        "file_ending": ".nii.gz", "channel_names": {"0": "CT"}, "numTraining": 2}))
    cli = os.path.join(os.path.dirname(sys.executable), "nnunetv2_segresmamba")
    subprocess.run([cli, "evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "-djfile", str(dataset_json),
                    "--nsd-tolerance-mm", "1", "spleen=2", "-np", "2"], check=True)
    with open(out / "cases.csv") as f:
        reader = csv.DictReader(f)
        rows = {(r["case"], r["class"]): r for r in reader}
        assert reader.fieldnames == CSV_COLUMNS == ["case", "class", "dice", "hd95_mm", "nsd"]
    hd95, nsd = by_hand(one, np.roll(one, 2, axis=0), 1.0)
    assert float(rows["a", "liver"]["hd95_mm"]) == pytest.approx(hd95, rel=1e-5)
    assert float(rows["a", "liver"]["nsd"]) == pytest.approx(nsd, rel=1e-5)
    assert [float(rows["a", "spleen"][m]) for m in ("dice", "hd95_mm", "nsd")] == [1.0, 0.0, 1.0]
    assert float(rows["b", "liver"]["hd95_mm"]) == pytest.approx(diagonal_mm(SHAPE, SPACING), rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"]["spleen"]["both_empty"] == 1 and summary["classes"]["liver"]["prediction_empty"] == 1
    assert [summary["classes"][c]["nsd_tolerance_mm"] for c in ("liver", "spleen")] == [1.0, 2.0]
    assert summary["classes"]["liver"]["dice_mean"] == pytest.approx(float(rows["a", "liver"]["dice"]) / 2)
    again = subprocess.run([cli, "evaluate", str(ref_dir), str(pred_dir), "-o", str(out), "-djfile",
                            str(dataset_json)], capture_output=True, text=True)
    assert again.returncode == 1 and "nothing is overwritten" in again.stderr


def test_a_2d_image_as_nnunet_reads_it_is_measured_in_2d():
    """nnU-Net reads a 2D image as (1, y, x) with a placeholder spacing of 999 on the first axis:
    measured as that one-slice volume, every foreground pixel would be a surface voxel."""
    from nnunetv2_segresmamba.evaluation.folder import as_image_dims

    ref = np.zeros((1, 40, 40), bool)
    ref[0, 10:30, 10:30] = True
    pred = np.roll(ref, 2, axis=2)
    r, p, spacing = as_image_dims(ref, pred, [999.0, 0.5, 1.0])
    assert r.shape == (40, 40) and spacing == [0.5, 1.0]
    m = binary_metrics(r, p, spacing, tolerance_mm=1.0)
    assert m.hd95_mm == pytest.approx(2.0)  # the left and right edges moved 2 px of 1 mm; top and bottom 0
    plain = binary_metrics(ref[0], pred[0], [0.5, 1.0], tolerance_mm=1.0)
    assert (m.hd95_mm, m.nsd) == (plain.hd95_mm, plain.nsd)
    as_volume = binary_metrics(ref, pred, [999.0, 0.5, 1.0], tolerance_mm=1.0)  # what reading it as 3D gives
    assert abs(as_volume.nsd - m.nsd) > 0.1 or abs(as_volume.hd95_mm - m.hd95_mm) > 0.5
    assert as_image_dims(ref[0][None].repeat(3, 0), ref[0][None].repeat(3, 0), [2.0, 1.0, 1.0])[0].shape == (3, 40, 40)
