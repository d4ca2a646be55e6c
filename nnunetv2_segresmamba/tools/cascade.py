"""A ``3d_lowres`` + ``3d_cascade_fullres`` pair in a dataset's plans, for datasets too small
for nnU-Net to plan one (it adds them only where the full-resolution patch covers less than a
quarter of the median image).

The lowres configuration is planned by nnU-Net's own planner at a coarser spacing, exactly as
``nnUNetv2_plan_experiment`` plans one for a large dataset; then run
``nnUNetv2_preprocess -d DATASET -c 3d_lowres`` and train the two stages as usual.
"""

from __future__ import annotations

import json
import os

LOWRES, CASCADE, FULLRES = "3d_lowres", "3d_cascade_fullres", "3d_fullres"


def add_lowres_configuration(dataset: str | int, factor: float = 2.0, plans_name: str = "nnUNetPlans") -> dict:
    """Plans ``3d_lowres`` at ``factor`` times the ``3d_fullres`` spacing (and its median image
    size divided by ``factor``) with nnU-Net's ``ExperimentPlanner``, links it to a
    ``3d_cascade_fullres`` that inherits ``3d_fullres`` (``next_stage``/``previous_stage``), and
    writes both into ``nnUNet_preprocessed/DATASET/<plans_name>.json``. Returns the plans.

    Needs the dataset's fingerprint and plans (``nnUNetv2_plan_and_preprocess`` or
    ``nnUNetv2_extract_fingerprint`` + ``nnUNetv2_plan_experiment``). Existing ``3d_lowres`` and
    ``3d_cascade_fullres`` configurations are replaced.
    """
    import numpy as np
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    from nnunetv2_segresmamba.tools.pipeline import require_nnunet_env

    if factor <= 1:
        raise ValueError(f"factor must be above 1 (the lowres spacing is factor x the fullres one), got {factor}")
    preprocessed = require_nnunet_env(("nnUNet_raw", "nnUNet_preprocessed"))["nnUNet_preprocessed"]
    name = maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else dataset)
    plans_file = os.path.join(preprocessed, name, f"{plans_name}.json")
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"{plans_file} does not exist: plan the dataset first, "
                                f"nnUNetv2_plan_and_preprocess -d {dataset} -c 3d_fullres")
    with open(plans_file) as f:
        plans = json.load(f)
    fullres = plans["configurations"].get(FULLRES)
    if fullres is None:
        raise ValueError(f"{plans_file} has no {FULLRES} configuration (a 2D dataset?); a cascade needs 3D images")
    planner = ExperimentPlanner(name, plans_name=plans_name)
    spacing = np.array(fullres["spacing"]) * factor
    shape = np.maximum(np.round(np.array(fullres["median_image_size_in_voxels"]) / factor), 1)
    lowres = planner.get_plans_for_configuration(spacing, shape, planner.generate_data_identifier(LOWRES),
                                                 float(np.prod(shape) * planner.dataset_json["numTraining"]), {})
    plans["configurations"][LOWRES] = {**lowres, "batch_dice": False, "next_stage": CASCADE}
    plans["configurations"][CASCADE] = {"inherits_from": FULLRES, "previous_stage": LOWRES}
    recursive_fix_for_json_export(plans)  # numpy values as JSON numbers and lists, as nnU-Net saves plans
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=4)
    return plans
