"""Tri-orientated Mamba (ToM): SegMamba's ``Mamba(bimamba_type="v3")``, backend-agnostic.

Three scans share one ``in_proj`` and one ``out_proj``: forward over the flattened volume,
reverse (suffix ``_b``) and inter-slice (suffix ``_s``, which visits the same in-plane
position in every slice before moving on). Parameter names and shapes are those of
mamba_ssm's ``Mamba`` plus SegMamba's suffixed copies, so official weights load as they are.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from functools import partial
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from nnunetv2_segresmamba.operators.backends import (
    causal_depthwise_conv1d,
    check_backend,
    load_cuda_kernels,
    resolve_path,
)
from nnunetv2_segresmamba.operators.directions import DIRECTIONS, check_directions, kinds_of
from nnunetv2_segresmamba.operators.selective_scan import selective_scan

PER_DIRECTION_BACKENDS = ("pure", "cuda")  # those that call a selective scan per direction
ScanFunction = Callable[..., Tensor]  # mamba_ssm's selective_scan_fn signature, see selective_scan


FUSED_PATHS = ("numba", "triton")  # every direction in one call per kernel


def fused_module(path: str) -> ModuleType:
    """``numba_tom`` or ``triton_tom`` (imported on first use): both provide ``directional_conv``
    and ``fused_scan`` with the same contract."""
    if path not in FUSED_PATHS:
        raise ValueError(f"the fused paths are {FUSED_PATHS}, got {path!r}")
    return importlib.import_module(f"nnunetv2_segresmamba.operators.{path}_tom")


def check_scan_function(scan_function: ScanFunction | None, backend: str) -> ScanFunction | None:
    """``scan_function`` if ``backend`` can use it; a TypeError or ValueError saying why not."""
    if scan_function is None:
        return None
    if not callable(scan_function):
        raise TypeError(f"scan_function must be a callable with selective_scan's signature, got {scan_function!r}")
    if backend not in PER_DIRECTION_BACKENDS:
        raise ValueError(f"scan_function replaces the scan of the backends {PER_DIRECTION_BACKENDS}, which scan "
                         f"one direction at a time; backend={backend!r} may run the fused numba or Triton kernels, "
                         f"which have no separate scan. Pass backend='pure' (any device) or 'cuda'.")
    return scan_function


def to_inter_slice(x: Tensor, num_slices: int) -> Tensor:
    """(B, C, L) in slice-major order -> (B, C, L) visiting position p of every slice in turn."""
    return torch.stack(x.chunk(num_slices, dim=-1), dim=-1).flatten(-2)


def from_inter_slice(x: Tensor, num_slices: int) -> Tensor:
    """Inverse of :func:`to_inter_slice`."""
    batch, channels, length = x.shape
    return x.reshape(batch, channels, length // num_slices, num_slices).transpose(-1, -2).flatten(-2)


class TriOrientedMamba(nn.Module):
    """Mamba with forward, reverse and inter-slice scans (SegMamba's v3).

    Args:
        d_model: token width D.
        d_state: SSM state size N.
        d_conv: causal conv1d width.
        expand: E = expand * D inner width.
        backend: "auto" (on CUDA mamba_ssm's kernels, else the fused Triton kernels; on the CPU
            the fused numba kernels; each when it loads, else pure PyTorch), "pure", "numba",
            "triton" or "cuda"; see ``operators.backends``.
        directions: which scans to run, a subset of ``DIRECTIONS`` (for ablations); the
            parameters of the others are not created.
        scan_function: a selective scan used in every direction in place of the backend's own
            (to compare other implementations in this layer), called like mamba_ssm's
            ``selective_scan_fn`` and :func:`~nnunetv2_segresmamba.operators.selective_scan.selective_scan`:
            ``(u, delta, A, B, C, D, z, delta_bias=..., delta_softplus=True) -> y * silu(z)``
            (y alone for z None) with u, delta, z and the result (B, E, L), A (E, N), B and C
            (B, N, L), D (E,). Needs backend "pure" or "cuda"; None (the default) for the
            backend's own. It adds no parameter: the state_dict stays the same.

    Shapes: ``forward(hidden_states (B, L, D), num_slices) -> (B, L, D)``; ``L`` must be a
    multiple of ``num_slices``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        backend: str = "auto",
        directions: Sequence[str] = DIRECTIONS,
        scan_function: ScanFunction | None = None,
    ):
        super().__init__()
        if min(d_model, d_state, d_conv, expand) < 1:
            raise ValueError("d_model, d_state, d_conv and expand must all be positive")
        self.directions = check_directions(directions)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.backend = check_backend(backend)
        self.scan_function = check_scan_function(scan_function, self.backend)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        for suffix in self.directions:
            self._add_direction(suffix)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        if "" in self.directions:
            self._init_forward_dt()

    def _add_direction(self, suffix: str) -> None:
        d_inner, d_state = self.d_inner, self.d_state
        self.add_module(
            f"conv1d{suffix}",
            nn.Conv1d(d_inner, d_inner, self.d_conv, groups=d_inner, padding=self.d_conv - 1),
        )
        self.add_module(f"x_proj{suffix}", nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False))
        self.add_module(f"dt_proj{suffix}", nn.Linear(self.dt_rank, d_inner, bias=True))
        s4d_real = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.register_parameter(f"A{suffix}_log", nn.Parameter(torch.log(s4d_real)))
        self.register_parameter(f"D{suffix}", nn.Parameter(torch.ones(d_inner)))
        for name in (f"A{suffix}_log", f"D{suffix}"):
            getattr(self, name)._no_weight_decay = True

    def _init_forward_dt(self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4) -> None:
        """mamba_ssm's dt init; like SegMamba, only the forward direction gets it."""
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_proj.bias._no_reinit = True

    def forward(self, hidden_states: Tensor, num_slices: int) -> Tensor:
        batch, length, width = hidden_states.shape
        if width != self.d_model:
            raise ValueError(f"expected {self.d_model} channels in (B, L, D) input, got {width}")
        if num_slices < 1 or length % num_slices:
            raise ValueError(f"sequence length {length} is not a multiple of num_slices={num_slices}")
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, E) each
        return self.out_proj(self._scans(x, z, self.directions, num_slices))

    def direction_conv(self, hidden_states: Tensor, suffix: str, num_slices: int) -> Tensor:
        """The first part of one direction's scan, for :class:`MambaLayer`'s checkpointing:
        ``in_proj``'s x half, then the direction's causal conv and silu. (B, L, D) -> u, in the
        layout of the path that runs it, which :meth:`direction_scan` takes."""
        x = F.linear(hidden_states, self.in_proj.weight[: self.d_inner])  # (B, L, E)
        path, runner = self._path(x)
        if path in FUSED_PATHS:
            return self._fused_conv(x, (suffix,), num_slices, runner)
        order, _ = self._orders(suffix, num_slices)
        return self._conv(order(x.transpose(1, 2)), suffix, runner)

    def direction_scan(self, u: Tensor, suffix: str, num_slices: int) -> Tensor:
        """The rest of one direction's scan, ungated: u from :meth:`direction_conv` ->
        (B, L, E). ``gate_and_project(h, y)``, y the sum over the directions of
        ``direction_scan(direction_conv(h, s), s)``, is ``forward(h)`` up to rounding."""
        path, runner = self._path(u)
        if path in FUSED_PATHS:
            return self._fused_scan(u, None, (suffix,), num_slices, runner)
        _, restore = self._orders(suffix, num_slices)
        return restore(self._selective_scan(u, None, suffix, runner)).transpose(1, 2)

    def gate_and_project(self, hidden_states: Tensor, y: Tensor) -> Tensor:
        """``out_proj(y * silu(z))`` with z from ``in_proj``: (B, L, D), (B, L, E) -> (B, L, D). The
        gate in y's dtype (the scans' fp32 under autocast, as the fused kernels gate)."""
        z = F.linear(hidden_states, self.in_proj.weight[self.d_inner:])
        return self.out_proj(y * F.silu(z.to(y.dtype)))

    def _path(self, x: Tensor) -> tuple[str, ModuleType | None]:
        """The path that runs x (:func:`resolve_path`) and its kernels: the fused module, mamba_ssm's
        kernels ("cuda") or None ("pure")."""
        path = resolve_path(self.backend, x, self.d_state, self.d_conv)
        if path in FUSED_PATHS:
            return path, fused_module(path)
        return path, load_cuda_kernels() if path == "cuda" else None

    def _scans(self, x: Tensor, z: Tensor | None, suffixes: Sequence[str], num_slices: int) -> Tensor:
        """The scans of the directions ``suffixes``, summed and gated by silu(z) (ungated when z
        is None): x, z (B, L, E) -> (B, L, E)."""
        path, runner = self._path(x)
        if path in FUSED_PATHS:
            return self._fused_scan(self._fused_conv(x, suffixes, num_slices, runner), z, suffixes, num_slices, runner)
        x = x.transpose(1, 2)  # (B, E, L)
        z = None if z is None else z.transpose(1, 2)
        return sum(self._scan_in_order(x, z, suffix, num_slices, runner) for suffix in suffixes).transpose(1, 2)

    def _stacked(self, name: str, suffixes: Sequence[str]) -> Tensor:
        """The parameter ``name.format(suffix)`` of each direction in ``suffixes``, stacked in fp32: (K, ...)."""
        return torch.stack([self.get_parameter(name.format(suffix)) for suffix in suffixes]).float()

    def _fused_conv(self, x: Tensor, suffixes: Sequence[str], num_slices: int, fused: ModuleType) -> Tensor:
        """The causal conv and silu of the directions ``suffixes``, in fp32, with ``fused``'s kernel
        (:func:`fused_module`): x (B, L, E) -> u (B, K, L, E), at sequence positions."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float().contiguous()  # (B, L, E), channels-last
            conv_weight = self._stacked("conv1d{}.weight", suffixes).squeeze(2).transpose(1, 2).contiguous()
            return fused.directional_conv(x, conv_weight, self._stacked("conv1d{}.bias", suffixes),
                                          kinds_of(suffixes), num_slices)

    def _fused_scan(self, u: Tensor, z: Tensor | None, suffixes: Sequence[str], num_slices: int,
                    fused: ModuleType) -> Tensor:
        """The selective scans of the directions ``suffixes`` on u (B, K, L, E), summed, in fp32, with
        ``fused``'s kernel: -> (B, L, E), gated by silu(z) (z (B, L, E)) unless z is None."""
        stacked = partial(self._stacked, suffixes=suffixes)
        with torch.autocast(device_type=u.device.type, enabled=False):
            z = None if z is None else z.float().contiguous()
            x_dbl = u @ stacked("x_proj{}.weight").transpose(1, 2)  # (B, K, L, R + 2N)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            delta = dt @ stacked("dt_proj{}.weight").transpose(1, 2)  # (B, K, L, E); bias added in the scan
            A = -torch.exp(stacked("A{}_log")).transpose(1, 2).contiguous()  # (K, N, E)
            return fused.fused_scan(u, delta, A, B.contiguous(), C.contiguous(), stacked("D{}"),
                                    stacked("dt_proj{}.bias"), z, kinds_of(suffixes), num_slices)

    @staticmethod
    def _orders(suffix: str, num_slices: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """For (B, E, L) tensors: (into the direction's scan order, back to sequence order)."""
        if suffix == "_b":
            return partial(torch.flip, dims=(-1,)), partial(torch.flip, dims=(-1,))
        if suffix == "_s":
            return partial(to_inter_slice, num_slices=num_slices), partial(from_inter_slice, num_slices=num_slices)
        return _identity, _identity

    def _scan_in_order(self, x: Tensor, z: Tensor | None, suffix: str, num_slices: int,
                       kernels: ModuleType | None) -> Tensor:
        """One direction's y * silu(z) (y alone when z is None), x, z (B, E, L) -> (B, E, L),
        scanned in its order and put back in place."""
        order, restore = self._orders(suffix, num_slices)
        u = self._conv(order(x), suffix, kernels)
        return restore(self._selective_scan(u, None if z is None else order(z), suffix, kernels))

    def _conv(self, x: Tensor, suffix: str, kernels: ModuleType | None) -> Tensor:
        """One direction's causal conv and silu, (B, E, L) in its scan order."""
        conv1d: nn.Conv1d = getattr(self, f"conv1d{suffix}")
        if kernels is None:
            return causal_depthwise_conv1d(x, conv1d.weight, conv1d.bias)
        return kernels.causal_conv1d_fn(x.contiguous(), conv1d.weight.squeeze(1), conv1d.bias, activation="silu")

    def _selective_scan(self, u: Tensor, z: Tensor | None, suffix: str, kernels: ModuleType | None) -> Tensor:
        """One direction's selective scan of its conv output u: u, z (B, E, L) in scan order ->
        y * silu(z) (y when z is None), (B, E, L)."""
        x_proj: nn.Linear = getattr(self, f"x_proj{suffix}")
        dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
        A = -torch.exp(getattr(self, f"A{suffix}_log").float())
        D = getattr(self, f"D{suffix}").float()
        dt, B, C = torch.split(x_proj(u.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # bias is added inside the scan
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        scan = self.scan_function
        if scan is None:
            scan = selective_scan if kernels is None else kernels.selective_scan_fn
        return scan(
            u.contiguous(), delta.contiguous(), A, B, C, D, None if z is None else z.contiguous(),
            delta_bias=dt_proj.bias.float(), delta_softplus=True,
        )


def _identity(x: Tensor) -> Tensor:
    return x


class MambaLayer(nn.Module):
    """SegMamba's MambaLayer: LayerNorm over channels -> ToM -> residual.

    ``forward(x (B, C, D, H, W)) -> (B, C, D, H, W)``. The inter-slice scan uses the depth
    D of the feature map as its slice count (SegMamba hard-codes the depth at 128^3).
    Attribute names ``norm`` and ``mamba`` match SegMamba's state_dict. ``tom_kwargs`` are
    :class:`TriOrientedMamba`'s keyword arguments (``d_state``, ``backend``, ``directions``...).

    ``checkpointing``: while training, scan one direction at a time and keep none of its
    activations for the backward pass, which runs it again (``torch.utils.checkpoint``): the
    norm and each direction's scan, ungated, are a segment of their own, and so are the norm,
    the gate and ``out_proj`` on the directions' sum. The largest segment is one direction's scan,
    and between segments only x and that sum are kept. The same parameters; outputs and
    gradients equal the plain layer's up to fp32 rounding: ``in_proj``'s halves are separate
    products, the directions are summed in PyTorch rather than in the fused kernels, and on the
    pure path and mamba_ssm's the gate multiplies that sum rather than each direction. Without
    grad (validation, inference) nothing changes.
    """

    def __init__(self, dim: int, checkpointing: bool = False, **tom_kwargs: Any) -> None:
        super().__init__()
        self.dim = dim
        self.checkpointing = checkpointing
        self.norm = nn.LayerNorm(dim)
        self.mamba = TriOrientedMamba(dim, **tom_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, *spatial = x.shape
        if channels != self.dim:
            raise ValueError(f"MambaLayer expects {self.dim} channels, got {channels}")
        tokens = x.reshape(batch, channels, -1).transpose(1, 2)  # (B, L, C)
        if self.checkpointing and torch.is_grad_enabled():
            out = self._direction_by_direction(tokens, num_slices=spatial[0])
        else:
            out = self.mamba(self.norm(tokens), num_slices=spatial[0])
        return out.transpose(1, 2).reshape(x.shape) + x

    def _direction_by_direction(self, tokens: Tensor, num_slices: int) -> Tensor:
        y = sum(checkpoint(self._ungated_scan, tokens, suffix, num_slices, use_reentrant=False)
                for suffix in self.mamba.directions)
        return checkpoint(self._gate_and_project, tokens, y, use_reentrant=False)

    def _ungated_scan(self, tokens: Tensor, suffix: str, num_slices: int) -> Tensor:
        """One direction: its conv's input (norm, in_proj's x half) is not kept either, but run a
        third time for the conv's backward (a segment within this one)."""
        u = checkpoint(self._direction_conv, tokens, suffix, num_slices, use_reentrant=False)
        return self.mamba.direction_scan(u, suffix, num_slices)

    def _direction_conv(self, tokens: Tensor, suffix: str, num_slices: int) -> Tensor:
        return self.mamba.direction_conv(self.norm(tokens), suffix, num_slices)

    def _gate_and_project(self, tokens: Tensor, y: Tensor) -> Tensor:
        return self.mamba.gate_and_project(self.norm(tokens), y)
