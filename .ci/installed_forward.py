"""CI, between ``pip install .`` and ``pip install -e ".[test]"`` (a newcomer's order): a
forward pass of the ToM on the fused numba path through the INSTALLED package, then a check
that it wrote nothing into the installed package (numba's compiled kernels go to the per-user
cache folder; files left in site-packages would hide the editable install that follows).
Run as a script from anywhere: ``python .ci/installed_forward.py``."""

import sys
import sysconfig
from pathlib import Path

import torch

import nnunetv2_segresmamba
from nnunetv2_segresmamba.operators import numba_cache
from nnunetv2_segresmamba.operators.tom import MambaLayer

package = Path(nnunetv2_segresmamba.__file__).resolve().parent
if not package.is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve()):
    sys.exit(f"expected the installed package in site-packages, imported {package}")
before = {p for p in package.rglob("*") if p.suffix not in (".py", ".pyc")}

with torch.no_grad():
    y = MambaLayer(8, backend="numba")(torch.randn(1, 8, 2, 3, 4))
assert y.shape == (1, 8, 2, 3, 4) and torch.isfinite(y).all()

written = {p for p in package.rglob("*") if p.suffix not in (".py", ".pyc")} - before
if written:
    sys.exit(f"the numba forward pass wrote into the installed package: {sorted(map(str, written))}")
print(f"numba forward pass through {package}; kernels cached in {numba_cache.cache_folder()}")
