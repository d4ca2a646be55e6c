"""What setup.py declares against what the package needs."""

import ast
import os

import torch
from packaging.requirements import Requirement
from packaging.version import Version

import nnunetv2_segresmamba

SETUP_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def install_requires() -> list[Requirement]:
    """The ``install_requires`` of setup.py's ``setup()`` call, read without running it."""
    tree = ast.parse(open(SETUP_PY, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [Requirement(s) for s in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no install_requires")


def test_setup_py_asks_for_the_torch_the_package_needs():
    """setup.py's torch floor is TORCH_FLOOR (the torch whose safe_globals takes (class, name)
    entries, as networks.vmamba_weights reads VMamba's weights), and the torch running the tests meets it."""
    (torch_requirement,) = [r for r in install_requires() if r.name == "torch"]
    floor = Version(nnunetv2_segresmamba.TORCH_FLOOR)
    assert floor in torch_requirement.specifier
    assert not any(Version(v) in torch_requirement.specifier for v in ("2.1", "2.4", "2.5", "2.5.1"))
    assert Version(torch.__version__.split("+")[0]) >= floor
