"""A ``3d_lowres`` + ``3d_cascade_fullres`` pair in a dataset's plans, for datasets too small
for nnU-Net to plan one (it adds them only where the full-resolution patch covers less than a
quarter of the median image).

The lowres configuration is planned by the planner that made the plans (their
``experiment_planner_used``), at a spacing coarsened by nnU-Net's own rule (the finest axes
first, then all together), as ``nnUNetv2_plan_experiment`` plans one for a large dataset; only
where to stop differs: at ``factor`` ** 3 fewer voxels in the median image. Then run
``nnUNetv2_preprocess -d DATASET -c 3d_lowres`` and train the two stages as usual.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from nnunetv2_segresmamba.registry import DEFAULT_PLANS

LOWRES, CASCADE, FULLRES = "3d_lowres", "3d_cascade_fullres", "3d_fullres"
# ExperimentPlanner.plan_experiment: the spacing grows by 3% a step, and an axis counts as fine
# while the coarsest axis is more than twice its spacing
SPACING_STEP = 1.03
FINE_AXIS_RATIO = 2.0


def lowres_spacing(fullres_spacing: Sequence[float], factor: float) -> np.ndarray:
    """The spacing at which the median image has ``factor`` ** ndim fewer voxels than at
    ``fullres_spacing``, reached as nnU-Net's ``ExperimentPlanner.plan_experiment`` reaches its
    ``3d_lowres`` spacing: in steps of 3%, coarsening only the axes more than twice finer than
    the coarsest while there are any, then every axis by one factor. Isotropic-enough spacings
    (no axis more than twice finer) come out as ``factor`` x ``fullres_spacing``."""
    spacing = np.asarray(fullres_spacing, dtype=np.float64)
    scale = np.ones_like(spacing)  # lowres / fullres spacing, per axis
    target = factor ** spacing.size
    while (fine := _fine_axes(spacing * scale)).any():
        step = (target / np.prod(scale)) ** (1 / fine.sum())  # what would reach the target at once
        scale[fine] *= min(step, SPACING_STEP)
        if step <= SPACING_STEP:
            break
    scale *= factor / np.prod(scale) ** (1 / scale.size)  # the rest on every axis (1 if reached above)
    return spacing * scale


def _fine_axes(spacing: np.ndarray) -> np.ndarray:
    return spacing.max() / spacing > FINE_AXIS_RATIO


def planner_class(name: str) -> type:
    """nnU-Net's experiment planner class called ``name``, found where ``nnUNetv2_plan_experiment
    -pl`` finds it (``nnunetv2.experiment_planning``)."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), name,
                                        current_module="nnunetv2.experiment_planning")
    if found is None:
        raise ValueError(f"the plans were made by the planner {name!r}, which is not in nnunetv2.experiment_planning: "
                         "install the package that defines it there (nnUNetv2_plan_experiment -pl needs it there too), "
                         "or plan the dataset with one of nnU-Net's planners")
    return found


def add_lowres_configuration(dataset: str | int, factor: float = 2.0, plans_name: str = DEFAULT_PLANS) -> dict:
    """Plans ``3d_lowres`` at :func:`lowres_spacing` of the ``3d_fullres`` spacing with the
    planner named in the plans (``experiment_planner_used``; its default GPU memory target),
    links it to a ``3d_cascade_fullres`` that inherits ``3d_fullres`` (``next_stage``/
    ``previous_stage``), and writes both into ``nnUNet_preprocessed/DATASET/<plans_name>.json``.
    Returns the plans.

    Needs the dataset's fingerprint and plans (``nnUNetv2_plan_and_preprocess`` or
    ``nnUNetv2_extract_fingerprint`` + ``nnUNetv2_plan_experiment``). Existing ``3d_lowres`` and
    ``3d_cascade_fullres`` configurations are replaced.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    from nnunetv2_segresmamba.tools.pipeline import require_nnunet_env

    if factor <= 1:
        raise ValueError(f"factor must be above 1 (the lowres image has factor^3 fewer voxels), got {factor}")
    preprocessed = require_nnunet_env(("nnUNet_raw", "nnUNet_preprocessed"))["nnUNet_preprocessed"]
    name = maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else dataset)
    plans_file = os.path.join(preprocessed, name, f"{plans_name}.json")
    plans = _load_plans(plans_file, dataset)
    fullres = plans["configurations"].get(FULLRES)
    if fullres is None:
        raise ValueError(f"{plans_file} has no {FULLRES} configuration (a 2D dataset?); a cascade needs 3D images")
    planner = planner_class(plans["experiment_planner_used"])(name, preprocessor_name=fullres["preprocessor_name"],
                                                              plans_name=plans_name)
    plans["configurations"][LOWRES] = {**_plan_lowres(planner, fullres, factor), "batch_dice": False,
                                       "next_stage": CASCADE}
    plans["configurations"][CASCADE] = {"inherits_from": FULLRES, "previous_stage": LOWRES}
    recursive_fix_for_json_export(plans)  # numpy values as JSON numbers and lists, as nnU-Net saves plans
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=4)
    return plans


def _load_plans(plans_file: str, dataset: str | int) -> dict:
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"{plans_file} does not exist: plan the dataset first, "
                                f"nnUNetv2_plan_and_preprocess -d {dataset} -c 3d_fullres")
    with open(plans_file) as f:
        return json.load(f)


def _plan_lowres(planner, fullres: dict, factor: float) -> dict:
    """``planner``'s configuration at the lowres spacing, with the median image size and dataset
    size that ``plan_experiment`` gives it."""
    spacing = lowres_spacing(fullres["spacing"], factor)
    shape = np.array(fullres["spacing"]) / spacing * np.array(fullres["median_image_size_in_voxels"])
    num_training = planner.dataset_json["numTraining"]
    return planner.get_plans_for_configuration(spacing, tuple(max(1, round(s)) for s in shape),
                                               planner.generate_data_identifier(LOWRES),
                                               float(np.prod(shape, dtype=np.float64) * num_training), {})
