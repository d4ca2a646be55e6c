"""Plain references written from the math, independent of the package's code paths."""

import torch
import torch.nn.functional as F


def reference_scan(u, delta, A, B, C, D, z, delta_bias):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t ; y_t = <h_t, C_t> + D u_t ; y *= silu(z).

    One step at a time over the sequence; delta goes through bias and softplus first.
    """
    delta = F.softplus(delta + delta_bias[:, None])
    batch, d, length = u.shape
    h = torch.zeros(batch, d, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1) * F.silu(z)


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
        order = torch.tensor(orders[suffix])
        y = reference_mamba_direction(xz[..., order], params, suffix)
        out = out + torch.zeros_like(y).index_copy(-1, order, y)
    return torch.einsum("bel,de->bld", out, params["out_proj.weight"])
