"""Swin-UMamba and Swin-UMamba-dagger (Liu et al., 2024; JiarunLiu/Swin-UMamba): 2D U-Nets
around VMamba-Tiny's encoder (``networks.vmamba``), which can start from ImageNet weights.

Written from the official ``nnunetv2/nets/SwinUMamba.py`` and ``SwinUMambaD.py``; module names
follow them, so official checkpoints load with ``strict=True``.

- :class:`SwinUMamba`: a stem (Conv2d k7 s2, InstanceNorm) feeds the encoder (patches of 2); MONAI's
  UNETR blocks refine the input and the encoder's outputs into skips and decode them (widths
  48..768); deep supervision at 1, 1/2, 1/4 and 1/8 of the input size.
- :class:`SwinUMambaD` (dagger): the encoder on the image itself (patches of 4) and a decoder of
  VSS blocks with patch expanding (Swin-Unet's); deep supervision at 1, 1/4, 1/8 and 1/16.

Both take inputs whose sizes are multiples of :data:`PATCH_DIVISOR` (five halvings).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from torch import Tensor

from nnunetv2_segresmamba.networks.planning import SWIN_UMAMBA_DIVISOR as PATCH_DIVISOR
from nnunetv2_segresmamba.networks.vmamba import VSSM_TINY_DIMS, VSSLayer, VSSMEncoder, drop_path_rates

FEATURE_SIZES = (48, 96, 192, 384, 768)  # Swin-UMamba's stem, skip and decoder widths


def require_input_size(x: Tensor, name: str) -> None:
    """ValueError unless x is (B, C, H, W) with H and W multiples of :data:`PATCH_DIVISOR`."""
    if x.dim() != 4 or any(s % PATCH_DIVISOR for s in x.shape[2:]):
        raise ValueError(f"{name} takes 2D inputs (B, C, H, W) with H and W multiples of {PATCH_DIVISOR}, got "
                         f"{tuple(x.shape)}. Its nnU-Net trainers round the planned patch to such sizes.")


class SwinUMamba(nn.Module):
    """Swin-UMamba: ``forward(x (B, in_chans, H, W))`` -> logits (B, out_chans, H, W), or with
    deep supervision a list of 4, at H/1, H/2, H/4, H/8.

    Args:
        in_chans, out_chans: input channels and classes.
        deep_supervision: return the 4 outputs (training) instead of the full-size one.
        backend: the SS2D scans' backend (``operators.ss2d``).
    """

    deep_supervision_scales = (1.0, 0.5, 0.25, 0.125)  # of the outputs, against the input size

    def __init__(self, in_chans: int, out_chans: int, deep_supervision: bool = False, backend: str = "auto"):
        super().__init__()
        f = FEATURE_SIZES
        self.deep_supervision = deep_supervision
        self.stem = nn.Sequential(nn.Conv2d(in_chans, f[0], kernel_size=7, stride=2, padding=3),
                                  nn.InstanceNorm2d(f[0], eps=1e-5, affine=True))
        self.vssm_encoder = VSSMEncoder(**self.encoder_kwargs(), backend=backend)
        skip_inputs = (in_chans, *f[:4])
        for i, (c_in, c_out) in enumerate(zip(skip_inputs, f), start=1):
            self.add_module(f"encoder{i}", self._basic_block(c_in, c_out))
        for i, (c_in, c_out) in zip((6, 5, 4, 3, 2), zip((f[4], f[4], *f[3:0:-1]), f[::-1])):
            self.add_module(f"decoder{i}", UnetrUpBlock(2, c_in, c_out, kernel_size=3, upsample_kernel_size=2,
                                                        norm_name="instance", res_block=True))
        self.decoder1 = self._basic_block(f[0], f[0])
        self.out_layers = nn.ModuleList(UnetOutBlock(2, c, out_chans) for c in f[:4])

    @staticmethod
    def encoder_kwargs() -> dict:
        """Its encoder's patch embedding: the stem's channels in 2x2 patches."""
        return {"patch_size": 2, "in_chans": FEATURE_SIZES[0]}

    @staticmethod
    def _basic_block(c_in: int, c_out: int) -> UnetrBasicBlock:
        return UnetrBasicBlock(2, c_in, c_out, kernel_size=3, stride=1, norm_name="instance", res_block=True)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        require_input_size(x, "Swin-UMamba")
        stem, *stages = self.vssm_encoder(self.stem(x))  # stem: H/2; stages: H/4 .. H/32
        skips = [self.encoder1(x), self.encoder2(stem), self.encoder3(stages[0]), self.encoder4(stages[1]),
                 self.encoder5(stages[2])]
        decoded = [stages[3]]
        for block, skip in zip((self.decoder6, self.decoder5, self.decoder4, self.decoder3, self.decoder2),
                               reversed(skips)):
            decoded.append(block(decoded[-1], skip))
        features = [self.decoder1(decoded[-1]), decoded[-2], decoded[-3], decoded[-4]]  # H, H/2, H/4, H/8
        if not self.deep_supervision:
            return self.out_layers[0](features[0])
        return [head(feature) for head, feature in zip(self.out_layers, features)]

    def set_deep_supervision(self, enabled: bool) -> None:
        self.deep_supervision = enabled


class PatchExpand(nn.Module):
    """Swin-Unet's patch expanding: ``(B, C, H, W) -> (B, sH, sW, C_out)``, channels-last out:
    Linear C -> s^2 C_out, each token's values spread over an s x s patch, then LayerNorm.
    By default x2 to half the width."""

    def __init__(self, dim: int, scale: int = 2, out_dim: int | None = None):
        super().__init__()
        self.scale, self.out_dim = scale, dim // 2 if out_dim is None else out_dim
        self.expand = nn.Linear(dim, scale * scale * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.expand(x.permute(0, 2, 3, 1))  # (B, H, W, s * s * C_out), split as (s, s, C_out)
        batch, height, width, _ = x.shape
        s = self.scale
        x = x.reshape(batch, height, width, s, s, self.out_dim).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(batch, height * s, width * s, self.out_dim))


class FinalPatchExpand_X4(PatchExpand):  # noqa: N801 - the official class name
    """Swin-Unet's last patch expanding: ``(B, C, H, W) -> (B, 4H, 4W, C)``."""

    def __init__(self, dim: int):
        super().__init__(dim, scale=4, out_dim=dim)


class UNetResDecoder(nn.Module):
    """Swin-UMamba-dagger's decoder: from the deepest encoder output up, each stage expands x2,
    concatenates the skip, reduces to the skip's width (``concat_back_dim``) and runs 2 VSS
    blocks; a last x4 expansion returns to the input size.

    ``forward(skips)``: the encoder's outputs, shallowest first, (B, features[i], H/4/2^i, W/4/2^i)
    after the encoder's input at index 0 (unused). Returns logits at H (or, with deep
    supervision, a list at H, H/4, H/8, H/16).
    """

    def __init__(self, num_classes: int, deep_supervision: bool, features_per_stage: Sequence[int] = VSSM_TINY_DIMS,
                 drop_path_rate: float = 0.2, d_state: int = 16, backend: str = "auto"):
        super().__init__()
        self.deep_supervision = deep_supervision
        widths = list(features_per_stage)
        rates = drop_path_rates(drop_path_rate, [2] * (len(widths) - 1), descending=True)
        skip_widths = widths[-2::-1]  # deepest skip first
        self.stages = nn.ModuleList([*(VSSLayer(w, r, d_state, backend) for w, r in zip(skip_widths, rates)),
                                     nn.Identity()])
        self.expand_layers = nn.ModuleList([*(PatchExpand(w) for w in widths[:0:-1]), FinalPatchExpand_X4(widths[0])])
        self.seg_layers = nn.ModuleList(nn.Conv2d(w, num_classes, 1) for w in (*skip_widths, widths[0]))
        self.concat_back_dim = nn.ModuleList(nn.Linear(2 * w, w) for w in skip_widths)

    def forward(self, skips: list[Tensor]) -> Tensor | list[Tensor]:
        x, outputs = skips[-1], []
        for s, (expand, stage) in enumerate(zip(self.expand_layers, self.stages)):
            x = expand(x)  # channels-last
            if s < len(self.concat_back_dim):
                x = self.concat_back_dim[s](torch.cat([x, skips[-(s + 2)].permute(0, 2, 3, 1)], dim=-1))
            x = stage(x).permute(0, 3, 1, 2)
            if self.deep_supervision or s == len(self.stages) - 1:
                outputs.append(self.seg_layers[s](x))
        return outputs[::-1] if self.deep_supervision else outputs[0]


class SwinUMambaD(nn.Module):
    """Swin-UMamba-dagger: ``forward(x (B, in_chans, H, W))`` -> logits (B, num_classes, H, W),
    or with deep supervision a list of 4, at H/1, H/4, H/8, H/16. Every conv He-initialised
    (nnU-Net's ``InitWeights_He(1e-2)``), as the official builder does."""

    deep_supervision_scales = (1.0, 0.25, 0.125, 0.0625)

    def __init__(self, in_chans: int, num_classes: int, deep_supervision: bool = False, backend: str = "auto"):
        super().__init__()
        self.vssm_encoder = VSSMEncoder(**self.encoder_kwargs(in_chans), backend=backend)
        self.decoder = UNetResDecoder(num_classes, deep_supervision, backend=backend)
        self.apply(InitWeights_He(1e-2))

    @staticmethod
    def encoder_kwargs(in_chans: int) -> dict:
        """Its encoder's patch embedding: the image's channels in 4x4 patches, as VMamba's."""
        return {"patch_size": 4, "in_chans": in_chans}

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        require_input_size(x, "Swin-UMamba-dagger")
        return self.decoder(self.vssm_encoder(x))

    def set_deep_supervision(self, enabled: bool) -> None:
        self.decoder.deep_supervision = enabled
