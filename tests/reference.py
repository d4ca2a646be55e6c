"""Plain references written from the math, independent of the package's code paths."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F


def reference_scan(u, delta, A, B, C, D, z, delta_bias):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t ; y_t = <h_t, C_t> + D u_t ; y *= silu(z) (z=None: no gate).

    One step at a time over the sequence; delta goes through bias and softplus first.
    """
    delta = F.softplus(delta + delta_bias[:, None])
    batch, d, length = u.shape
    h = torch.zeros(batch, d, A.shape[1], dtype=u.dtype, device=u.device)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    y = torch.stack(ys, dim=-1)
    return y if z is None else y * F.silu(z)


def reference_mamba_direction(xz, params, suffix):
    """One SegMamba v3 direction (mamba_inner_fn_no_out_proj) from a state_dict-like mapping."""
    x, z = xz.chunk(2, dim=1)
    w, b = params[f"conv1d{suffix}.weight"], params[f"conv1d{suffix}.bias"]
    x = F.silu(F.conv1d(F.pad(x, (w.shape[-1] - 1, 0)), w, b, groups=x.shape[1]))
    x_dbl = torch.einsum("bdl,kd->bkl", x, params[f"x_proj{suffix}.weight"])
    rank = params[f"dt_proj{suffix}.weight"].shape[1]
    n = params[f"A{suffix}_log"].shape[1]
    dt, B, C = x_dbl[:, :rank], x_dbl[:, rank:rank + n], x_dbl[:, rank + n:]
    delta = torch.einsum("bkl,dk->bdl", dt, params[f"dt_proj{suffix}.weight"])
    A = -torch.exp(params[f"A{suffix}_log"])
    return reference_scan(x, delta, A, B, C, params[f"D{suffix}"], z, params[f"dt_proj{suffix}.bias"])


def reference_tom(hidden, params, num_slices, directions=("", "_b", "_s")):
    """SegMamba's Mamba(bimamba_type='v3').forward on (B, L, D), spelled out with index lists.

    Each direction reads the sequence in its own order and writes its outputs back in place.
    """
    batch, length, _ = hidden.shape
    xz = torch.einsum("bld,ed->bel", hidden, params["in_proj.weight"])
    per_slice = length // num_slices
    orders = {
        "": list(range(length)),
        "_b": list(range(length - 1, -1, -1)),
        # inter-slice: position p of slice 0, of slice 1, ..., then position p + 1
        "_s": [s * per_slice + p for p in range(per_slice) for s in range(num_slices)],
    }
    out = 0
    for suffix in directions:
        order = torch.tensor(orders[suffix], device=hidden.device)
        y = reference_mamba_direction(xz[..., order], params, suffix)
        out = out + torch.zeros_like(y).index_copy(-1, order, y)
    return torch.einsum("bel,de->bld", out, params["out_proj.weight"])


# ---------------------------------------------------------------- the fused kernels' layout
# (B, K, L, E) per direction k at sequence positions, as numba_tom and triton_tom take them.

def device_of(backend: str) -> str:
    """Where a backend's tests run: Triton on the GPU if there is one (else in Triton's CPU
    interpreter, see conftest.py), everything else on the CPU."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def backends_to_test(*names: str) -> list:
    """pytest parameters for ``names``; "triton" is skipped where triton is not installed."""
    no_triton = importlib.util.find_spec("triton") is None
    skip = pytest.mark.skipif(no_triton, reason="triton is not installed (CUDA builds of torch bring it)")
    return [pytest.param(name, marks=skip if name == "triton" else ()) for name in names]


ATOL, RTOL = 1e-5, 1e-5  # fp32 outputs
GRAD_ATOL, GRAD_RTOL = 1e-4, 1e-4  # fp32 gradients, summed over up to a few hundred steps
FORWARD, REVERSE, INTER_SLICE, INTER_SLICE_REVERSE = 0, 1, 2, 3


def scan_order(kind, length, num_slices):
    """Positions in the order a direction visits them, written out as lists."""
    per_slice = length // num_slices
    inter_slice = [s * per_slice + p for p in range(per_slice) for s in range(num_slices)]
    if kind == FORWARD:
        return list(range(length))
    if kind == REVERSE:
        return list(reversed(range(length)))
    if kind == INTER_SLICE:
        return inter_slice
    assert kind == INTER_SLICE_REVERSE, kind
    return list(reversed(inter_slice))


def reference_fused_scan(u, delta, A, B, C, D, delta_bias, z, kinds, num_slices):
    """Each direction through the per-step loop in its own order, put back in place, summed,
    gated by silu(z) (none for z=None)."""
    length = u.shape[2]
    total = 0
    for k, kind in enumerate(kinds):
        order = torch.tensor(scan_order(kind, length, num_slices), device=u.device)
        y = reference_scan(u[:, k, order].mT, delta[:, k, order].mT, A[k].mT, B[:, k, order].mT, C[:, k, order].mT,
                           D[k], None, delta_bias[k])
        total = total + torch.zeros_like(y).index_copy(-1, order, y)
    return total.mT if z is None else total.mT * F.silu(z)


def reference_directional_conv(x, weight, bias, kinds, num_slices):
    outs = []
    for k, kind in enumerate(kinds):
        order = torch.tensor(scan_order(kind, x.shape[1], num_slices), device=x.device)
        conv = F.conv1d(F.pad(x[:, order].mT, (weight.shape[1] - 1, 0)), weight[k].mT.unsqueeze(1), bias[k],
                        groups=x.shape[2])
        outs.append(torch.zeros_like(conv).index_copy(-1, order, F.silu(conv)).mT)
    return torch.stack(outs, dim=1)


def scan_inputs(batch, directions, length, channels, states, seed=0, device="cpu", gate=True):
    """The fused scans' tensors by argument name, leaves that require grad; no z without ``gate``."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "u": (batch, directions, length, channels), "delta": (batch, directions, length, channels),
        "A": (directions, states, channels), "B": (batch, directions, length, states),
        "C": (batch, directions, length, states), "D": (directions, channels), "delta_bias": (directions, channels),
        "z": (batch, length, channels),
    }
    inputs = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    inputs["A"] = -torch.rand(shapes["A"], generator=g) * 4 - 0.1
    if not gate:
        del inputs["z"]
    return {k: v.to(device).requires_grad_() for k, v in inputs.items()}


def scan_arguments(inputs):
    """Keyword arguments of a fused scan (or its reference) for :func:`scan_inputs`' tensors:
    z=None, no gate, where they hold no z."""
    return {"z": None, **inputs}


def assert_outputs_and_gradients_match(ours, expected, inputs):
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
    weights = torch.randn_like(expected)
    grads_ref = torch.autograd.grad((expected * weights).sum(), list(inputs.values()))
    grads_ours = torch.autograd.grad((ours * weights).sum(), list(inputs.values()))
    for name, g_ref, g_ours in zip(inputs, grads_ref, grads_ours):
        torch.testing.assert_close(g_ours, g_ref, atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=f"gradient of {name}")
