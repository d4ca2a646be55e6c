"""nnU-Net finds our trainers in a fresh interpreter, without touching the user's own entries."""

import os
import subprocess
import sys

from nnunetv2_segresmamba.discovery import OPT_OUT_VAR, trainer_dir, with_trainer_dir


def fresh_python(code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", OPT_OUT_VAR)}
    result = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_installed_pth_sets_ext_trainer_in_a_new_process():
    assert fresh_python("import os; print(os.environ['nnUNet_extTrainer'])") == trainer_dir()


def test_user_entries_are_kept_first():
    mine = os.pathsep.join(["/data/my_trainers", "/opt/lab_trainers"])
    seen = fresh_python("import os; print(os.environ['nnUNet_extTrainer'])", nnUNet_extTrainer=mine)
    assert seen == os.pathsep.join([mine, trainer_dir()])


def test_opt_out_leaves_environment_alone():
    assert fresh_python("import os; print(os.environ.get('nnUNet_extTrainer'))", **{OPT_OUT_VAR: "1"}) == "None"


def test_nnunet_lookup_finds_trainer_like_train_and_predict_do():
    code = (
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
        "cls = find('nnUNetTrainerSegResMamba')\n"
        "print(cls.__module__ + '.' + cls.__name__)"
    )
    out = fresh_python(code).splitlines()[-1]
    assert out == "nnunetv2_segresmamba.trainers.segresmamba.nnUNetTrainerSegResMamba"


def test_trainer_dir_is_added_once():
    once = with_trainer_dir("/a")
    assert with_trainer_dir(once) == once == os.pathsep.join(["/a", trainer_dir()])
    assert with_trainer_dir(None) == trainer_dir()


def test_shim_folder_holds_only_the_shim():
    assert sorted(os.listdir(trainer_dir())) in (
        ["nnunetv2_segresmamba_trainers.py"],
        ["__pycache__", "nnunetv2_segresmamba_trainers.py"],
    )
