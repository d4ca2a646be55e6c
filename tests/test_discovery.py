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


def test_an_ext_trainer_entry_that_does_not_exist_is_an_error_naming_the_variable(tmp_path):
    missing = str(tmp_path / "my_trainerz")
    env = {k: v for k, v in os.environ.items() if k != OPT_OUT_VAR}
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train"), "1", "3d_fullres", "0",
                             "-tr", "nnUNetTrainerSegResMamba", "-device", "cpu"],
                            env={**env, "nnUNet_extTrainer": missing}, capture_output=True, text=True)
    assert result.returncode != 0
    assert f"nnUNet_extTrainer lists '{missing}', which is not a folder" in result.stderr
    assert f'export nnUNet_extTrainer="{trainer_dir()}"' in result.stderr


def test_predict_processes_name_an_unreadable_checkpoint(tmp_path):
    """nnU-Net's predictor reads checkpoints before any trainer code runs: in an nnUNetv2_predict
    process the hook adds the file's name to the error report (end to end: tests/test_e2e.py)."""
    checkpoint = tmp_path / "fold_0" / "checkpoint_final.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"PK\x03\x04 truncated")
    script = tmp_path / "nnUNetv2_predict"
    script.write_text(
        "import torch\n"
        "def initialize_from_trained_model_folder(model_training_output_dir, checkpoint_name):\n"
        "    for f in [0]:\n"
        "        torch.load(f'{model_training_output_dir}/fold_{f}/{checkpoint_name}')\n"
        f"initialize_from_trained_model_folder({str(tmp_path)!r}, 'checkpoint_final.pth')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != OPT_OUT_VAR}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{checkpoint} is not a readable checkpoint" in result.stderr
    assert f"mv {checkpoint} {checkpoint}.corrupt" in result.stderr
    assert result.stderr.count("is not a readable checkpoint") == 1


def test_the_advice_is_printed_once_when_the_hook_runs_twice(monkeypatch, capsys):
    """A venv whose site-packages Python lists twice (lib and lib64) runs our .pth twice: the
    unreadable checkpoint's advice still comes once."""
    import pickle

    from nnunetv2_segresmamba.discovery import activate

    monkeypatch.setattr(sys, "argv", ["/venv/bin/nnUNetv2_predict"])
    monkeypatch.setattr(sys, "excepthook", lambda *args: None)
    activate()
    activate()

    def initialize_from_trained_model_folder(model_training_output_dir, f, checkpoint_name):
        raise pickle.UnpicklingError("truncated")

    try:
        initialize_from_trained_model_folder("/results/run", 0, "checkpoint_final.pth")
    except pickle.UnpicklingError as error:
        sys.excepthook(type(error), error, error.__traceback__)
    assert capsys.readouterr().err.count("/results/run/fold_0/checkpoint_final.pth is not a readable checkpoint") == 1


def test_the_shim_exposes_every_trainer_and_no_recipe_or_base():
    import importlib.util
    import inspect

    from nnunetv2_segresmamba.trainers import baselines, segresmamba, swin_umamba, umamba

    shim_file = os.path.join(trainer_dir(), "nnunetv2_segresmamba_trainers.py")
    spec = importlib.util.spec_from_file_location("shim", shim_file)
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    defined = {name for module in (baselines, segresmamba, swin_umamba, umamba)
               for name, value in inspect.getmembers(module, inspect.isclass)
               if value.__module__ == module.__name__ and name.startswith("nnUNetTrainer")}
    assert len(defined) > 60 and all(hasattr(shim, name) for name in defined)
    assert not any(hasattr(shim, name) for name in ("SwinUMambaRecipe", "UMambaRecipe", "nnUNetTrainer",
                                                    "ComparisonTrainerBase"))
