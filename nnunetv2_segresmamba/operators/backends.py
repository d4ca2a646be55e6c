"""Backend selection for the ToM: which implementation runs a given input.

- ``"cuda"``: mamba_ssm/causal_conv1d kernels, an optional extra (``pip install .[cuda]``).
- ``"triton"``: the fused GPU kernels of ``operators.triton_tom`` (Triton comes with CUDA
  builds of torch; no compiler to install). On CPU tensors only under ``TRITON_INTERPRET=1``.
- ``"numba"``: the fused CPU kernels of ``operators.numba_tom`` (numba is a dependency).
- ``"pure"``: PyTorch ops only, on any device; the readable reference.
- ``"auto"``: on CUDA tensors mamba_ssm, else Triton, else pure; on CPU tensors numba, else
  pure. Never Triton on the CPU.

Compiled paths are loaded lazily, on the first forward that needs them. A broken build (an
ABI "undefined symbol"), a missing numba, or Triton kernels that fail at their first launch
on this GPU (an old GPU, "no kernel image is available") give one warning and the next path.
All paths use the same parameters, so a checkpoint trained with one predicts with any other.

With the environment variable ``NNUNETV2_SEGRESMAMBA_PATH_LOG`` set to a file, every process
appends to it one JSON line per distinct choice (process, backend, device, state size, path,
whether inference mode was on): how a check tells which kernels a CLI run used.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nnunetv2_segresmamba.operators import triton_tom
from nnunetv2_segresmamba.operators.triton_tom import TRITON_DEVICE_HINT, triton_runs_on

BACKENDS = ("auto", "pure", "numba", "cuda", "triton")
NUMBA_HINT = "The CPU scan is several times slower without it: pip install numba (wheels for Linux, macOS, Windows)."
T = TypeVar("T")
INSTALL_HINT = (
    "Install the CUDA kernels on a machine with nvcc and a CUDA build of torch: "
    "pip install 'nnunetv2-segresmamba[cuda]' (mamba-ssm and causal-conv1d)."
)
TRITON_HINT = "Triton comes with CUDA builds of torch (pip install torch); on other builds: pip install triton."
PATH_LOG_VAR = "NNUNETV2_SEGRESMAMBA_PATH_LOG"


class CudaKernels(NamedTuple):
    selective_scan_fn: Callable[..., Tensor]
    causal_conv1d_fn: Callable[..., Tensor]


def _load_or_warn(load: Callable[[], T], what: str, hint: str, quiet_if_absent: tuple[str, ...] = ()) -> T | None:
    """``load()``, or None with one RuntimeWarning if it raises ImportError or OSError.

    No warning when a package named in ``quiet_if_absent`` is simply not installed.
    """
    try:
        return load()
    except (ImportError, OSError) as err:
        if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in quiet_if_absent:
            return None
        warnings.warn(f"{what} unavailable ({type(err).__name__}: {err}); falling back to the next path "
                      f"(see operators.backends). {hint}", RuntimeWarning, stacklevel=3)
        return None


def _import_cuda_kernels() -> CudaKernels:
    from causal_conv1d import causal_conv1d_fn
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return CudaKernels(selective_scan_fn, causal_conv1d_fn)


@functools.lru_cache(maxsize=1)
def load_cuda_kernels() -> CudaKernels | None:
    """The mamba_ssm and causal_conv1d kernels, or None if they do not load (warned once,
    unless they are simply not installed: they are an optional extra)."""
    return _load_or_warn(_import_cuda_kernels, "mamba_ssm CUDA kernels", INSTALL_HINT,
                         quiet_if_absent=("mamba_ssm", "causal_conv1d"))


@functools.lru_cache(maxsize=1)
def triton_loads() -> bool:
    """Whether triton imports (warned once if it is installed but broken)."""
    return _load_or_warn(triton_tom.load_kernels, "triton", TRITON_HINT, quiet_if_absent=("triton",)) is not None


@functools.cache
def triton_works(device: str, d_state: int = 16, d_conv: int = 4) -> bool:
    """Whether the Triton ToM compiles and runs on ``device`` for a layer of state size
    ``d_state`` and conv width ``d_conv``: every kernel once, without autograd and with a
    backward pass (:func:`triton_tom.probe`, which runs outside inference mode, so it answers
    the same under nnU-Net's predictor). Once per (device, d_state, d_conv). Any failure (an
    old GPU, "no kernel image is available", a compiler error) gives one warning and False."""
    if not triton_loads():
        return False
    try:
        triton_tom.probe(device, d_state, d_conv)
        return True
    except Exception as err:  # noqa: BLE001 - whatever breaks the first launch, the pure path still works
        warnings.warn(f"the Triton ToM kernels failed at their first launch on {device} ({type(err).__name__}: "
                      f"{err}); using the pure-PyTorch selective scan.", RuntimeWarning, stacklevel=2)
        return False


@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether the fused CPU kernels load (warned once, several times slower, if they do not)."""
    from nnunetv2_segresmamba.operators.numba_tom import load_kernels

    return _load_or_warn(load_kernels, "numba", NUMBA_HINT) is not None


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_path(backend: str, x: Tensor, d_state: int = 16, d_conv: int = 4) -> str:
    """The implementation that runs ``x`` in a ToM of state size ``d_state`` and conv width
    ``d_conv``: "cuda", "triton", "numba" or "pure" (logged where PATH_LOG_VAR says)."""
    path = _resolve_path(backend, x, d_state, d_conv)
    log = os.environ.get(PATH_LOG_VAR)
    if log:
        _log_path(log, backend, str(x.device), d_state, path, torch.is_inference_mode_enabled())
    return path


def _resolve_path(backend: str, x: Tensor, d_state: int, d_conv: int) -> str:
    if backend == "pure":
        return "pure"
    if backend == "cuda":
        return _explicit_cuda(x)
    if backend == "triton":
        return _explicit_triton(x)
    if backend == "numba":
        return _explicit_numba(x)
    if x.is_cuda:
        if load_cuda_kernels() is not None:
            return "cuda"
        return "triton" if triton_works(str(x.device), d_state, d_conv) else _slow_gpu_path()
    return "numba" if x.device.type == "cpu" and numba_available() else "pure"


@functools.cache
def _log_path(log: str, backend: str, device: str, d_state: int, path: str, inference_mode: bool) -> None:
    """Appends one JSON line to the file ``log``, once per process and distinct arguments."""
    record = {"process": os.path.basename(sys.argv[0]), "pid": os.getpid(), "backend": backend, "device": device,
              "d_state": d_state, "path": path, "inference_mode": inference_mode}
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")


def _explicit_cuda(x: Tensor) -> str:
    if not x.is_cuda:
        raise RuntimeError(f"backend='cuda' needs a CUDA tensor, got one on {x.device}.")
    if load_cuda_kernels() is None:
        raise RuntimeError(f"backend='cuda' was requested but mamba_ssm does not load. {INSTALL_HINT}")
    return "cuda"


def _explicit_triton(x: Tensor) -> str:
    if not triton_runs_on(x.device):
        raise RuntimeError(f"backend='triton' got a tensor on {x.device}. {TRITON_DEVICE_HINT} Use 'auto' or 'numba'.")
    if not triton_loads():
        raise RuntimeError(f"backend='triton' was requested but triton does not load. {TRITON_HINT}")
    return "triton"


def _explicit_numba(x: Tensor) -> str:
    if x.device.type != "cpu":
        raise RuntimeError(f"backend='numba' runs on the CPU, got a tensor on {x.device}; use 'auto' or 'triton'.")
    if not numba_available():
        raise RuntimeError(f"backend='numba' was requested but numba does not load. {NUMBA_HINT}")
    return "numba"


@functools.lru_cache(maxsize=1)
def _slow_gpu_path() -> str:
    warnings.warn("Neither mamba_ssm nor Triton runs on this GPU: the ToM uses the pure-PyTorch scan, many times "
                  f"slower. {TRITON_HINT} {INSTALL_HINT}", RuntimeWarning, stacklevel=3)
    return "pure"


def causal_depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """silu(causal depthwise conv1d), the pure twin of ``causal_conv1d_fn(..., activation='silu')``.

    Shapes: x (batch, d, L); weight (d, 1, k); bias (d,). Returns (batch, d, L).
    """
    kernel = weight.shape[-1]
    out = F.conv1d(x, weight, bias, padding=kernel - 1, groups=x.shape[1])
    return F.silu(out[..., : x.shape[-1]])
