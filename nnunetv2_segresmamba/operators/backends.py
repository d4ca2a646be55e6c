"""Backend selection: mamba_ssm/causal_conv1d CUDA kernels when usable, else pure PyTorch.

The kernels are an optional extra (``pip install .[cuda]``). They are imported lazily, on
the first CUDA forward, and any ImportError or OSError (a missing build, an ABI
"undefined symbol") gives one warning and the pure path. Both paths use the same
parameters, so a checkpoint trained with one predicts with the other.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "pure", "cuda")
INSTALL_HINT = (
    "Install the CUDA kernels on a machine with nvcc and a CUDA build of torch: "
    "pip install 'nnunetv2-segresmamba[cuda]' (mamba-ssm and causal-conv1d)."
)


class CudaKernels(NamedTuple):
    selective_scan_fn: Callable[..., Tensor]
    causal_conv1d_fn: Callable[..., Tensor]


@functools.lru_cache(maxsize=1)
def load_cuda_kernels() -> CudaKernels | None:
    """The mamba_ssm and causal_conv1d kernels, or None (warned once) if they do not load."""
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError) as err:
        warnings.warn(
            f"mamba_ssm CUDA kernels unavailable ({type(err).__name__}: {err}); "
            f"using the pure-PyTorch selective scan. {INSTALL_HINT}",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return CudaKernels(selective_scan_fn, causal_conv1d_fn)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_kernels(backend: str, x: Tensor) -> CudaKernels | None:
    """The CUDA kernels to use for ``x``, or None for the pure path."""
    if backend == "pure" or not x.is_cuda:
        if backend == "cuda":
            raise RuntimeError(f"backend='cuda' needs a CUDA tensor, got one on {x.device}.")
        return None
    kernels = load_cuda_kernels()
    if kernels is None and backend == "cuda":
        raise RuntimeError(f"backend='cuda' was requested but mamba_ssm does not load. {INSTALL_HINT}")
    return kernels


def causal_depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """silu(causal depthwise conv1d), the pure twin of ``causal_conv1d_fn(..., activation='silu')``.

    Shapes: x (batch, d, L); weight (d, 1, k); bias (d,). Returns (batch, d, L).
    """
    kernel = weight.shape[-1]
    out = F.conv1d(x, weight, bias, padding=kernel - 1, groups=x.shape[1])
    return F.silu(out[..., : x.shape[-1]])
