"""VMamba's building blocks (Liu et al., 2024, v0 as Swin-UMamba copies them): channels-last 2D
token maps, (B, H, W, C), with SS2D (``operators.ss2d``) as the token mixer.

Module and parameter names are VMamba's, so that its ImageNet checkpoints map onto
:class:`VSSMEncoder` key for key (``networks.vmamba_weights`` reads, maps, checks and loads them):
``patch_embed``, ``layers.{i}.blocks.{j}.{ln_1, self_attention}``; VMamba keeps its patch merging
in ``layers.{i}.downsample``, the encoder in ``downsamples.{i}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import DropPath
from torch import Tensor

from nnunetv2_segresmamba.operators.ss2d import SS2D

VSSM_TINY_DEPTHS = (2, 2, 9, 2)
VSSM_TINY_DIMS = (96, 192, 384, 768)


class PatchEmbed2D(nn.Module):
    """Non-overlapping patches: ``(B, C_in, H, W) -> (B, H/p, W/p, C)``, Conv2d k=s=p, then LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """2x2 neighbours concatenated, LayerNorm, Linear 4C -> 2C: ``(B, H, W, C) -> (B, H/2, W/2, 2C)``.
    H and W must be even."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"patch merging needs even sizes, got the token map {tuple(x.shape)} (B, H, W, C)")
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LayerNorm(x))): ``(B, H, W, C) -> (B, H, W, C)``."""

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16, backend: str = "auto"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(hidden_dim, d_state=d_state, backend=backend)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class VSSLayer(nn.Module):
    """``len(drop_paths)`` VSS blocks of width ``dim``, block i with stochastic depth ``drop_paths[i]``."""

    def __init__(self, dim: int, drop_paths: Sequence[float], d_state: int = 16, backend: str = "auto"):
        super().__init__()
        self.blocks = nn.ModuleList(VSSBlock(dim, p, d_state, backend) for p in drop_paths)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def drop_path_rates(rate: float, depths: Sequence[int], descending: bool = False) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to ``rate`` over all blocks (falling with
    ``descending``), split into stages of ``depths`` blocks."""
    total = sum(depths)
    ends = (rate, 0.0) if descending else (0.0, rate)
    rates = torch.linspace(*ends, total, device="cpu")  # also where a meta device is the default
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s:s + d].tolist() for s, d in zip(starts, depths)]


class VSSMEncoder(nn.Module):
    """VMamba's encoder without its classifier: patch embedding, then stages of VSS blocks with
    patch merging between them.

    ``forward(x (B, C_in, H, W))`` returns ``[x, s_0, ..., s_3]``: the input itself, then each
    stage's output channels-first, s_i (B, dims[i], H / (p 2^i), W / (p 2^i)) for patch size p.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, depths: Sequence[int] = VSSM_TINY_DEPTHS,
                 dims: Sequence[int] = VSSM_TINY_DIMS, d_state: int = 16, drop_path_rate: float = 0.2,
                 backend: str = "auto"):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"one depth per stage: depths {list(depths)}, dims {list(dims)}")
        self.patch_embed = PatchEmbed2D(patch_size, in_chans, dims[0])
        rates = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList(VSSLayer(dim, r, d_state, backend) for dim, r in zip(dims, rates))
        self.downsamples = nn.ModuleList(PatchMerging2D(dim) for dim in dims[:-1])
        self.apply(_vmamba_init)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = [x]
        x = self.patch_embed(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            outputs.append(x.permute(0, 3, 1, 2))
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return outputs

    @torch.no_grad()
    def freeze(self, frozen: bool = True) -> None:
        """Stops (or resumes) training every parameter but the patch embedding's."""
        for name, parameter in self.named_parameters():
            if not name.startswith("patch_embed."):
                parameter.requires_grad_(not frozen)


def _vmamba_init(module: nn.Module) -> None:
    """VMamba's: Linear weights truncated normal (std 0.02), biases 0; LayerNorms 1 and 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
