"""The numba kernels' compiled code lives in the per-user cache folder, never in the package
(pip's uninstall would leave it there, hiding a later install): a copy of the package runs a
kernel in fresh processes, and its tree must stay as it was."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nnunetv2_segresmamba.operators import numba_cache

PACKAGE = Path(__file__).resolve().parents[1] / "nnunetv2_segresmamba"

# runs the cheapest kernel, and a cache=True function of the user's own, in a fresh process
SCRIPT = """
import json, numpy as np
from nnunetv2_segresmamba.operators import numba_kernels as k
import user_kernel
k._check_order(k.Directions(kinds=np.array([0, 1], np.int64), num_slices=1), 4, 4, 1)
stats = k._check_order.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "cache_path": stats.cache_path, "twice": user_kernel.twice(2)}))
"""

USER_KERNEL = "import numba\n\n\n@numba.njit(cache=True)\ndef twice(x):\n    return 2 * x\n"


@pytest.fixture
def installed(tmp_path):
    """A copy of the package (as an install holds it) and a user's module of their own."""
    shutil.copytree(PACKAGE, tmp_path / "site" / "nnunetv2_segresmamba",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "user_kernel.py").write_text(USER_KERNEL)
    return tmp_path


def _files(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def _run(root: Path, cache: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(PYTHONPATH=os.pathsep.join([str(root / "site"), str(root / "user")]), PYTHONDONTWRITEBYTECODE="1",
               **{numba_cache.ENV_VAR: str(cache)})
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_kernels_are_cached_in_our_folder_only_and_recompiled_when_directions_change(installed):
    package = installed / "site" / "nnunetv2_segresmamba"
    before, cache = _files(package), installed / "cache"
    first, _ = _run(installed, cache)
    assert (first["hits"], first["misses"], first["twice"]) == (0, 1, 4)
    assert Path(first["cache_path"]).parent == cache
    assert _files(package) == before, "the kernels wrote into the package"
    assert any(p.suffix == ".nbi" and "_check_order" in p.name for p in cache.rglob("*"))
    # numba's own cache=True, for the user's other code, is left as it is (next to their source)
    assert any(p.suffix == ".nbi" for p in (installed / "user" / "__pycache__").iterdir())

    second, _ = _run(installed, cache)
    assert (second["hits"], second["misses"]) == (1, 0)
    # the kernels compile in the direction kinds as constants: a change there is a new compile
    with open(package / "operators" / "directions.py", "a") as f:
        f.write("\n# changed\n")
    third, _ = _run(installed, cache)
    assert (third["hits"], third["misses"]) == (0, 1)


def test_an_unwritable_cache_folder_warns_and_the_kernels_still_run(installed):
    package = installed / "site" / "nnunetv2_segresmamba"
    before = _files(package)
    blocker = installed / "a-file"
    blocker.write_text("not a folder")  # no folder can be made under it, even as root
    result, stderr = _run(installed, blocker / "numba")
    assert (result["hits"], result["misses"], result["cache_path"]) == (0, 1, None)  # compiled, not cached
    assert "cannot write the numba cache folder" in stderr and numba_cache.ENV_VAR in stderr
    assert _files(package) == before


def test_the_cache_folder_is_ours_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv(numba_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert numba_cache.cache_folder() == tmp_path / "xdg" / "nnunetv2_segresmamba" / "numba"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert numba_cache.cache_folder() == tmp_path / "home" / ".cache" / "nnunetv2_segresmamba" / "numba"
    monkeypatch.setenv(numba_cache.ENV_VAR, str(tmp_path / "ours"))
    assert numba_cache.cache_folder() == tmp_path / "ours"
