"""Where the numba kernels' compiled code is kept: a per-user cache folder, never the installed
package (numba's own ``cache=True`` writes into the package's ``__pycache__``, which pip's
uninstall leaves behind as an empty namespace package that hides a later install).

The folder is ``$NNUNETV2_SEGRESMAMBA_NUMBA_CACHE`` if set, else
``$XDG_CACHE_HOME/nnunetv2_segresmamba/numba``, else ``~/.cache/nnunetv2_segresmamba/numba``,
read when ``operators.numba_kernels`` is first imported. Each source folder (an install, a
checkout) gets its own subfolder, as in numba's own cache. Only the functions decorated with
:func:`cached_njit` use it: numba's configuration for other code is left as it is. A folder
that cannot be written: one warning, and the kernels are compiled in every process.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numba as nb
from numba.core.caching import CompileResultCacheImpl, FunctionCache, UserWideCacheLocator

ENV_VAR = "NNUNETV2_SEGRESMAMBA_NUMBA_CACHE"

# source file -> the files whose constants its kernels compile in (a change there recompiles)
_COMPILED_IN: dict[str, tuple[str, ...]] = {}


def cache_folder() -> Path:
    """The folder of the compiled kernels (see the module's docstring)."""
    chosen = os.environ.get(ENV_VAR)
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnunetv2_segresmamba" / "numba"


def _file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class PackageCacheLocator(UserWideCacheLocator):
    """numba's per-user locator, pointed at :func:`cache_folder`; its freshness stamp also
    covers the files the kernels compile constants from."""

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        self._cache_path = str(cache_folder() / self.get_suitable_cache_subpath(py_file))

    def get_source_stamp(self):
        compiled_in = _COMPILED_IN.get(os.path.abspath(self._py_file), ())
        return super().get_source_stamp(), tuple(_file_hash(path) for path in compiled_in)


class _PackageCacheImpl(CompileResultCacheImpl):
    _locator_classes = [PackageCacheLocator]


class _PackageFunctionCache(FunctionCache):
    _impl_class = _PackageCacheImpl


@functools.lru_cache(maxsize=1)
def writable_cache_folder() -> Path | None:
    """:func:`cache_folder`, created; None (after one warning) if it cannot be written."""
    folder = cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        warnings.warn(f"nnunetv2_segresmamba: cannot write the numba cache folder {folder} ({error}); the CPU "
                      f"kernels are compiled again in every process. Set {ENV_VAR} to a writable folder.",
                      RuntimeWarning, stacklevel=2)
        return None
    return folder


def cached_njit(compiled_in: Sequence[str] = (), **options) -> Callable:
    """``numba.njit(**options)`` whose compiled code is cached in :func:`cache_folder` (not
    ``cache=True``, which writes next to the source). ``compiled_in``: paths of the files
    whose constants the function compiles in; a change to any of them recompiles."""

    def decorate(function):
        dispatcher = nb.njit(**options)(function)
        if writable_cache_folder() is not None:
            source = os.path.abspath(function.__code__.co_filename)
            _COMPILED_IN[source] = tuple(os.path.abspath(p) for p in compiled_in)
            dispatcher._cache = _PackageFunctionCache(dispatcher.py_func)  # what Dispatcher.enable_caching does
        return dispatcher

    return decorate
