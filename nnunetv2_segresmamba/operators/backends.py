"""Backend selection for the ToM: which implementation runs a given input.

- ``"cuda"``: mamba_ssm/causal_conv1d kernels, an optional extra (``pip install .[cuda]``).
- ``"numba"``: the fused CPU kernels of ``operators.numba_tom`` (numba is a dependency).
- ``"pure"``: PyTorch ops only, on any device; the readable reference.
- ``"auto"``: on CUDA tensors mamba_ssm, else pure; on CPU tensors numba, else pure.

Compiled paths are loaded lazily, on the first forward that needs them, and any
ImportError or OSError (a missing build, an ABI "undefined symbol") gives one warning and
the pure path. All paths use the same parameters, so a checkpoint trained with one
predicts with any other.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "pure", "numba", "cuda")
NUMBA_HINT = "The CPU scan is several times slower without it: pip install numba (wheels for Linux, macOS, Windows)."
T = TypeVar("T")
INSTALL_HINT = (
    "Install the CUDA kernels on a machine with nvcc and a CUDA build of torch: "
    "pip install 'nnunetv2-segresmamba[cuda]' (mamba-ssm and causal-conv1d)."
)


class CudaKernels(NamedTuple):
    selective_scan_fn: Callable[..., Tensor]
    causal_conv1d_fn: Callable[..., Tensor]


def _load_or_warn(load: Callable[[], T], what: str, hint: str) -> T | None:
    """``load()``, or None with one RuntimeWarning if it raises ImportError or OSError."""
    try:
        return load()
    except (ImportError, OSError) as err:
        warnings.warn(f"{what} unavailable ({type(err).__name__}: {err}); using the pure-PyTorch selective scan. "
                      f"{hint}", RuntimeWarning, stacklevel=3)
        return None


def _import_cuda_kernels() -> CudaKernels:
    from causal_conv1d import causal_conv1d_fn
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return CudaKernels(selective_scan_fn, causal_conv1d_fn)


@functools.lru_cache(maxsize=1)
def load_cuda_kernels() -> CudaKernels | None:
    """The mamba_ssm and causal_conv1d kernels, or None (warned once) if they do not load."""
    return _load_or_warn(_import_cuda_kernels, "mamba_ssm CUDA kernels", INSTALL_HINT)


@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether the fused CPU kernels load (warned once, several times slower, if they do not)."""
    from nnunetv2_segresmamba.operators.numba_tom import load_kernels

    return _load_or_warn(load_kernels, "numba", NUMBA_HINT) is not None


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_path(backend: str, x: Tensor) -> str:
    """The implementation that runs ``x``: "cuda", "numba" or "pure"."""
    if backend == "pure":
        return "pure"
    on_cpu = x.device.type == "cpu"
    if backend == "cuda" and not x.is_cuda:
        raise RuntimeError(f"backend='cuda' needs a CUDA tensor, got one on {x.device}.")
    if backend == "numba" and not on_cpu:
        raise RuntimeError(f"backend='numba' runs on the CPU, got a tensor on {x.device}; use 'auto' or 'cuda'.")
    if x.is_cuda and load_cuda_kernels() is not None:
        return "cuda"
    if backend == "cuda":
        raise RuntimeError(f"backend='cuda' was requested but mamba_ssm does not load. {INSTALL_HINT}")
    if on_cpu and numba_available():
        return "numba"
    if backend == "numba":
        raise RuntimeError(f"backend='numba' was requested but numba does not load. {NUMBA_HINT}")
    return "pure"


def causal_depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """silu(causal depthwise conv1d), the pure twin of ``causal_conv1d_fn(..., activation='silu')``.

    Shapes: x (batch, d, L); weight (d, 1, k); bias (d,). Returns (batch, d, L).
    """
    kernel = weight.shape[-1]
    out = F.conv1d(x, weight, bias, padding=kernel - 1, groups=x.shape[1])
    return F.silu(out[..., : x.shape[-1]])
