"""The comparison family: parameter counts against the paper, patch rounding, the registry."""

import copy

import pytest
import torch

from nnunetv2_segresmamba.registry import FAMILY, members, network, on_plans
from nnunetv2_segresmamba.trainers import base

MEASURED_PARAMS = {  # 128^3 (128^2 for the 2D-only networks), 1 -> 14 channels
    "SegResMamba": 73_548_350,  # paper 119.98M: see documentation/network.md
    "SegMamba": 67_363_262,
    "SwinUNETR": 62_187_296,
    "UNETR": 93_029_806,
    "nnU-Net": 31_205_254,
    "SegResMamba-NoToM": 70_426_430,
    "SegResMamba-ForwardToM": 73_035_710,
    "SegResMamba-ForwardReverseToM": 73_292_030,
    "SegResMamba-nnUNetRecipe": 73_548_350,
    "nnU-Net-paperRecipe": 31_205_254,
    "nnU-Net ResEnc M": 102_359_430,  # M, L and XL: one network for a given patch (their plans differ)
    "nnU-Net ResEnc L": 102_359_430,
    "nnU-Net ResEnc XL": 102_359_430,
    "U-Mamba Bot": 42_130_054,  # the official UMambaBot at this plan has as many (tests/test_umamba.py)
    "U-Mamba Enc": 42_760_582,
    "U-Mamba Bot-NoMamba": 41_454_214,
    "Swin-UMamba": 59_889_368,  # the official key lists' shapes (tests/test_swin_umamba.py): as many
    "Swin-UMamba-dagger": 27_497_720,
    "Swin-UMamba-Scratch": 59_889_368,
    "Swin-UMamba-dagger-Scratch": 27_497_720,
}


def on_meta_where_it_builds(m):
    """The meta device (no memory, no init), except for MONAI's SwinUNETR, whose __init__ reads a
    tensor's value."""
    return torch.device("cpu" if m.network == "SwinUNETR" else "meta")


@pytest.mark.parametrize("m", FAMILY, ids=lambda m: m.network)
def test_parameter_counts_at_128(m):
    with on_meta_where_it_builds(m):
        params = sum(p.numel() for p in m.build(1, 14, (128,) * max(m.spatial_dims)).parameters())
    assert params == MEASURED_PARAMS[m.network]
    if m.paper is not None and m.network != "SegResMamba":
        assert params / 1e6 == pytest.approx(m.paper.params_m, rel=2e-3)


def plans_with_patch(patch):
    return {
        "dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
        "original_median_shape_after_transp": [64, 64, 64], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {"patch_size": list(patch), "batch_size": 2},
            "3d_cascade_fullres": {"inherits_from": "3d_fullres"},
        },
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


@pytest.mark.parametrize(
    "patch,divisor,expected",
    [((40, 224, 192), 32, [64, 224, 192]), ((40, 224, 192), 16, [48, 224, 192]), ((128, 128, 128), 32, [128] * 3),
     ((80, 160, 112), 16, [80, 160, 112]), ((16, 32, 32), 16, [32, 32, 32])],
)
def test_patch_rounding_is_written_into_the_plans(patch, divisor, expected):
    plans = plans_with_patch(patch)
    planned = base.round_patch_in_plans(plans, "3d_fullres", divisor)
    assert planned == list(patch)
    assert plans["configurations"]["3d_fullres"]["patch_size"] == expected


def test_rounding_keeps_at_least_min_multiple_multiples_per_axis():
    plans = plans_with_patch((20, 40, 100))
    base.round_patch_in_plans(plans, "3d_fullres", 32, min_multiple=1)
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 96]


def test_rounding_an_inheriting_configuration_overrides_only_that_configuration():
    plans = plans_with_patch((40, 224, 192))
    original = copy.deepcopy(plans["configurations"]["3d_fullres"])
    base.round_patch_in_plans(plans, "3d_cascade_fullres", 32)
    assert plans["configurations"]["3d_cascade_fullres"]["patch_size"] == [64, 224, 192]
    assert plans["configurations"]["3d_fullres"] == original


def test_no_divisor_leaves_plans_alone():
    plans = plans_with_patch((40, 224, 192))
    base.round_patch_in_plans(plans, "3d_fullres", None)
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [40, 224, 192]


def member_of(trainer: str, plans: str = "nnUNetPlans"):
    from nnunetv2_segresmamba import trainers

    return getattr(trainers, trainer).family_member(plans)


def test_each_trainer_names_its_member():
    """Variants inherit their member; on other plans the member of the same trainer on those
    plans, where the registry has one."""
    assert member_of("nnUNetTrainerSwinUNETR_smoke").network == "SwinUNETR"
    assert member_of("nnUNetTrainerSegResMamba_nnUNetRecipe_smoke").network == "SegResMamba-nnUNetRecipe"
    assert member_of("nnUNetTrainerSegResMamba_2epochs").network == "SegResMamba"
    assert member_of("nnUNetTrainerSegResMamba_lowmem_GaLore_smoke").network == "SegResMamba"
    assert member_of("nnUNetTrainerSegResMambaNoToM_smoke").network == "SegResMamba-NoToM"
    assert [m.trainer for m in FAMILY][0] == "nnUNetTrainerSegResMamba"
    assert member_of("nnUNetTrainerComparisonNnUNet_smoke", "nnUNetResEncUNetMPlans").network == "nnU-Net ResEnc M"
    assert member_of("nnUNetTrainerComparisonNnUNet").network == "nnU-Net"
    assert member_of("nnUNetTrainerSegResMamba", "nnUNetResEncUNetLPlans").network == "SegResMamba"  # any plans
    assert on_plans(network("SegMamba"), "nnUNetResEncUNetMPlans") is network("SegMamba")
    assert network("SwinUNETR").trainer == "nnUNetTrainerSwinUNETR"
    with pytest.raises(KeyError, match="the networks are .*'nnU-Net-paperRecipe'"):
        network("SwinUnetr")


@pytest.mark.parametrize("name,patch", [("SwinUNETR", (40, 64, 64)), ("UNETR", (40, 64, 64)),
                                        ("UNETR", (40, 64)), ("nnU-Net", (48, 64, 64))])
def test_builders_refuse_indivisible_patches(name, patch):
    with pytest.raises(ValueError, match="divisible by"):
        network(name).build(1, 2, patch)


@pytest.mark.parametrize("name", ["U-Mamba Bot", "U-Mamba Enc", "nnU-Net ResEnc M"])
def test_planned_builders_refuse_a_patch_their_strides_do_not_divide(name):
    with pytest.raises(ValueError, match=r"multiple of their product.*use \[40, 64, 64\]"):
        network(name).build(1, 2, (37, 64, 64))


def test_published_figures_name_their_source():
    revisited = {m.network: m.revisited for m in FAMILY if m.revisited is not None}
    btcv = {name: figures.dice_on("BTCV") for name, figures in revisited.items()}
    assert btcv == {"nnU-Net": 83.08, "SwinUNETR": 78.89, "nnU-Net ResEnc M": 83.31, "nnU-Net ResEnc L": 83.35,
                    "nnU-Net ResEnc XL": 83.28, "U-Mamba Bot": 83.51, "U-Mamba Enc": 82.41,
                    "U-Mamba Bot-NoMamba": 83.69}
    assert {m.network: m.plans for m in members("baseline")} == {
        "nnU-Net ResEnc M": "nnUNetResEncUNetMPlans", "nnU-Net ResEnc L": "nnUNetResEncUNetLPlans",
        "nnU-Net ResEnc XL": "nnUNetResEncUNetXLPlans", "U-Mamba Bot": "nnUNetPlans", "U-Mamba Enc": "nnUNetPlans",
        "Swin-UMamba": "nnUNetPlans", "Swin-UMamba-dagger": "nnUNetPlans"}


@pytest.mark.parametrize("name,patch", [("SegResMamba", (32, 48)), ("SwinUNETR", (64, 64)), ("UNETR", (32, 48)),
                                        ("nnU-Net", (64, 64)), ("nnU-Net ResEnc M", (32, 48)),
                                        ("U-Mamba Bot", (32, 48)), ("U-Mamba Enc", (32, 48)),
                                        ("Swin-UMamba", (32, 64)), ("Swin-UMamba-dagger", (64, 32))])
def test_2d_networks_of_the_family(name, patch):
    """The members whose networks exist in 2D build them for a 2D patch (MONAI's spatial_dims=2)."""
    net = network(name).build(2, 3, patch)
    assert net(torch.randn(1, 2, *patch)).shape == (1, 3, *patch)


def test_segmamba_is_3d_only():
    assert network("SegMamba").spatial_dims == (3,)
    with pytest.raises(ValueError, match=r"SegMamba takes 3D patches, got the 2D patch \[64, 64\]"):
        network("SegMamba").build(1, 2, (64, 64))


SMOKE_PARAMS = {  # 2 -> 3 channels, at the patch each trains with in test_e2e.py
    "nnUNetTrainerSegMamba_smoke": ([32, 32, 32], 7_602_195),  # widths 16-128, hidden 256: 67.4M in full
    "nnUNetTrainerSwinUNETR_smoke": ([64, 64, 64], 4_078_509),  # feature size 12: 62.2M at 48
    "nnUNetTrainerUNETR_smoke": ([32, 32, 32], 9_732_595),  # ViT of width 192: 93.0M at 768
}


@pytest.mark.parametrize("trainer", SMOKE_PARAMS)
def test_smoke_trainers_build_small_networks_through_build_network(trainer):
    from types import SimpleNamespace

    from nnunetv2_segresmamba import trainers

    patch, expected = SMOKE_PARAMS[trainer]
    trainer_class = getattr(trainers, trainer)
    with on_meta_where_it_builds(member_of(trainer)):
        net = trainer_class.build_network(None, SimpleNamespace(patch_size=patch), 2, 3, False)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_trainers_patch_rules():
    from nnunetv2_segresmamba import trainers

    divisors = {"nnUNetTrainerSegMamba": 16, "nnUNetTrainerSwinUNETR": 32, "nnUNetTrainerUNETR": 16,
                "nnUNetTrainerSwinUMamba": 32, "nnUNetTrainerSwinUMambaDScratch": 32}
    for trainer, divisor in divisors.items():
        assert getattr(trainers, trainer).patch_divisor == divisor, trainer
        assert getattr(trainers, f"{trainer}_smoke").patch_divisor == divisor, trainer
    # nnU-Net's trainers plan their own network and keep the planned patch; SegResMamba plans its strides
    assert trainers.nnUNetTrainerComparisonNnUNet.patch_divisor is None
    assert trainers.nnUNetTrainerSegResMamba.patch_divisor is None and network("SegResMamba").patch_divisor is None


def test_only_segmamba_refuses_2d_and_only_swin_umamba_3d():
    from nnunetv2_segresmamba import trainers

    for m in FAMILY:
        expected = (3,) if m.network == "SegMamba" else (2,) if m.network.startswith("Swin-UMamba") else (2, 3)
        for trainer in (m.trainer, f"{m.trainer}_smoke"):
            assert getattr(trainers, trainer).supported_spatial_dims == expected, trainer


def test_groups_keep_the_five_as_the_default_and_every_trainer_exists():
    from nnunetv2_segresmamba import trainers

    assert [m.network for m in members()] == ["SegResMamba", "SegMamba", "SwinUNETR", "UNETR", "nnU-Net"]
    assert len(members("ablation")) == 8 and len(members("baseline")) == 7 and len(members(None)) == len(FAMILY) == 20
    assert len({m.network for m in FAMILY}) == len(FAMILY)  # benchmarks and reports key rows by network
    for m in FAMILY:
        assert m.trainer in trainers.__all__ and f"{m.trainer}_smoke" in trainers.__all__
    with pytest.raises(ValueError, match="group must be"):
        members("ablations")


def test_every_member_is_named_by_its_trainer_class():
    """The registry's members and the trainer classes agree: each member's trainer names it (on
    the member's plans), so no lookup needs to parse a trainer's name."""
    for m in FAMILY:
        assert member_of(m.trainer, m.plans) == m, m.network
