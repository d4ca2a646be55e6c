"""SS2D, VMamba's 2D selective scan (Liu et al., 2024), as Swin-UMamba uses it, on the ToM's backends.

A feature map (B, H, W, C) is projected to x and a gate z; x goes through one depthwise 3x3
conv and SiLU, then four selective scans read it in four orders:

    k = 0  row-major                 (h, w) -> h * W + w
    k = 1  column-major              down each column, column after column
    k = 2  row-major, reversed
    k = 3  column-major, reversed

Each direction has its own x_proj, dt_proj, A and D (stacked along a first axis of 4); their
outputs, put back in place, are summed, normalised (``out_norm``), gated by silu(z) and
projected back to C. Parameter names and shapes are VMamba's (v0, as Swin-UMamba copies it):
``in_proj``, ``conv2d``, ``x_proj_weight`` (4, R + 2N, E), ``dt_projs_weight`` (4, E, R),
``dt_projs_bias`` (4, E), ``A_logs`` (4E, N), ``Ds`` (4E,), ``out_norm``, ``out_proj``.

Column-major is the ToM's inter-slice order with the H rows as slices, so the fused numba and
Triton kernels run all four scans in one call (``operators.directions.SS2D_KINDS``); the pure
path scans each direction on reordered copies, as VMamba does.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nnunetv2_segresmamba.operators.backends import check_backend, load_cuda_kernels, resolve_path
from nnunetv2_segresmamba.operators.directions import SS2D_KINDS
from nnunetv2_segresmamba.operators.selective_scan import selective_scan
from nnunetv2_segresmamba.operators.tom import FUSED_PATHS, fused_module

SCANS = len(SS2D_KINDS)


def to_scan_orders(x: Tensor) -> Tensor:
    """(B, E, H, W) -> (B, 4, E, L): the map read row-major, column-major and both reversed."""
    rows, columns = x.flatten(2), x.transpose(2, 3).flatten(2)
    forward = torch.stack([rows, columns], dim=1)
    return torch.cat([forward, forward.flip(-1)], dim=1)


def from_scan_orders(y: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`to_scan_orders`, the scans summed in VMamba's order: (B, 4, E, L) -> (B, E, L)."""
    batch, _, channels, length = y.shape

    def from_columns(t: Tensor) -> Tensor:  # (B, E, L) column-major -> row-major
        return t.reshape(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, length)

    return y[:, 0] + y[:, 2].flip(-1) + from_columns(y[:, 1]) + from_columns(y[:, 3].flip(-1))


class SS2D(nn.Module):
    """VMamba's SS2D block: ``forward(x (B, H, W, C)) -> (B, H, W, C)``.

    Args:
        d_model: C, the token width.
        d_state: N, the SSM state size.
        d_conv: the depthwise conv's kernel size (3).
        expand: E = expand * C.
        backend: as :class:`~nnunetv2_segresmamba.operators.tom.TriOrientedMamba`'s ("auto",
            "pure", "numba", "triton", "cuda"); the parameters are the same on every backend.
        dropout: on the output (VMamba's ``attn_drop_rate``).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: int = 2, backend: str = "auto",
                 dropout: float = 0.0):
        super().__init__()
        if min(d_model, d_state, d_conv, expand) < 1:
            raise ValueError("d_model, d_state, d_conv and expand must all be positive")
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.backend = check_backend(backend)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, d_conv, padding=(d_conv - 1) // 2, groups=self.d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(SCANS, self.dt_rank + 2 * d_state, self.d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(SCANS, self.d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(SCANS, self.d_inner))
        s4d_real = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(SCANS * self.d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(s4d_real))  # (4E, N)
        self.Ds = nn.Parameter(torch.ones(SCANS * self.d_inner))
        for name in ("A_logs", "Ds"):
            getattr(self, name)._no_weight_decay = True
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_scan_parameters()

    @torch.no_grad()
    def reset_scan_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4) -> None:
        """VMamba's init of the per-direction projections: x_proj as nn.Linear's default, dt_proj
        weights uniform in +-1/sqrt(R), dt biases the inverse softplus of dt in [dt_min, dt_max]."""
        bound = 1 / math.sqrt(self.d_inner)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_projs_weight, -std, std)
        log_dt = torch.rand(SCANS, self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        if channels != self.d_model:
            raise ValueError(f"SS2D expects (B, H, W, {self.d_model}) input, got {tuple(x.shape)}")
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (B, H, W, E) each
        u = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))  # (B, E, H, W)
        path = resolve_path(self.backend, u, self.d_state)
        with torch.autocast(device_type=u.device.type, enabled=False):
            if path in FUSED_PATHS:
                y = self._fused_scans(u.float(), fused_module(path))
            else:
                y = self._scans_in_order(u.float(), load_cuda_kernels() if path == "cuda" else None)
            y = self.out_norm(y.reshape(batch, height, width, self.d_inner))
        return self.dropout(self.out_proj(y * F.silu(z)))

    def _direction_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        """A (4, E, N), D and the dt bias (4, E), in fp32."""
        A = -torch.exp(self.A_logs.float()).view(SCANS, self.d_inner, self.d_state)
        return A, self.Ds.float().view(SCANS, self.d_inner), self.dt_projs_bias.float()

    def _fused_scans(self, u: Tensor, fused) -> Tensor:
        """The four scans in one call of ``fused``'s kernels: u (B, E, H, W) -> (B, L, E), summed."""
        batch, channels, height, width = u.shape
        tokens = u.permute(0, 2, 3, 1).reshape(batch, 1, height * width, channels)  # (B, 1, L, E), row-major
        x_dbl = tokens @ self.x_proj_weight.float().transpose(1, 2)  # (B, 4, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = dt @ self.dt_projs_weight.float().transpose(1, 2)  # (B, 4, L, E); bias added in the scan
        A, D, delta_bias = self._direction_parameters()
        u_per_scan = tokens.expand(-1, SCANS, -1, -1).contiguous()
        return fused.fused_scan(u_per_scan, delta, A.transpose(1, 2).contiguous(), B.contiguous(), C.contiguous(),
                                D, delta_bias, None, SS2D_KINDS, height)

    def _scans_in_order(self, u: Tensor, kernels) -> Tensor:
        """Each scan on its reordered copy (VMamba's way): u (B, E, H, W) -> (B, L, E), summed.
        ``kernels``: mamba_ssm's (``operators.backends.load_cuda_kernels``), or None for the pure scan."""
        batch, channels, height, width = u.shape
        xs = to_scan_orders(u)  # (B, 4, E, L)
        x_dbl = torch.einsum("bkel,kce->bkcl", xs, self.x_proj_weight.float())
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum("bkrl,ker->bkel", dt, self.dt_projs_weight.float())
        A, D, delta_bias = self._direction_parameters()
        scan = selective_scan if kernels is None else kernels.selective_scan_fn
        ys = [scan(xs[:, k].contiguous(), delta[:, k].contiguous(), A[k], B[:, k].contiguous(), C[:, k].contiguous(),
                   D[k], None, delta_bias=delta_bias[k], delta_softplus=True) for k in range(SCANS)]
        return from_scan_orders(torch.stack(ys, dim=1), height, width).transpose(1, 2)
