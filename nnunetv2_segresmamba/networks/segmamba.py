"""SegMamba (Xing et al., MICCAI 2024), a port of ge-xing/SegMamba ``model_segmamba/segmamba.py``.

Module names follow the official model, so its state_dict keys are identical and official
checkpoints load with ``strict=True``. The ToM layers are the shared
:class:`~nnunetv2_segresmamba.operators.tom.MambaLayer`; their inter-slice scan takes the
slice count from the feature depth, which equals the official hard-coded [64, 32, 16, 8]
at a depth of 128, so outputs match the official model there and stay meaningful elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch.nn as nn
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from torch import Tensor

from nnunetv2_segresmamba.networks.blocks import MlpChannel, checkpointed, crop_to, pad_to_multiple
from nnunetv2_segresmamba.operators.tom import MambaLayer

SIZE_DIVISOR = 16  # stem stride 2, then three stride-2 downsamplings


class GSC(nn.Module):
    """Gated spatial convolution: two Conv3-IN-ReLU in series plus a Conv1-IN-ReLU branch,
    summed, Conv1-IN-ReLU, + input. ``(B, C, D, H, W) -> (B, C, D, H, W)``."""

    def __init__(self, channels: int):
        super().__init__()
        for index, kernel in (("", 3), ("2", 3), ("3", 1), ("4", 1)):
            setattr(self, f"proj{index}", nn.Conv3d(channels, channels, kernel, 1, kernel // 2))
            setattr(self, f"norm{index}", nn.InstanceNorm3d(channels))
            setattr(self, f"nonliner{index}", nn.ReLU())

    def _unit(self, index: str, x: Tensor) -> Tensor:
        return getattr(self, f"nonliner{index}")(getattr(self, f"norm{index}")(getattr(self, f"proj{index}")(x)))

    def forward(self, x: Tensor) -> Tensor:
        summed = self._unit("2", self._unit("", x)) + self._unit("3", x)
        return self._unit("4", summed) + x


class MambaEncoder(nn.Module):
    """Stem and downsamplings, a GSC and ``depths[i]`` ToM layers per stage, IN + MLP skips.

    ``forward(x (B, in_chans, D, H, W))`` returns 4 features at 1/2, 1/4, 1/8, 1/16.
    ``checkpointing``: while training, each stage's downsampling and GSC, and its skip (IN + MLP),
    are checkpointed segments (:func:`~.blocks.checkpointed`), and its ToM layers run direction by
    direction (:class:`~nnunetv2_segresmamba.operators.tom.MambaLayer`'s ``checkpointing``).
    """

    def __init__(self, in_chans: int = 1, depths: Sequence[int] = (2, 2, 2, 2),
                 dims: Sequence[int] = (48, 96, 192, 384), backend: str = "auto", checkpointing: bool = False):
        super().__init__()
        self.checkpointing = checkpointing
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv3d(in_chans, dims[0], 7, stride=2, padding=3))])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(nn.InstanceNorm3d(dims[i]), nn.Conv3d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*(MambaLayer(d, checkpointing=checkpointing, backend=backend) for _ in range(depth)))
            for d, depth in zip(dims, depths, strict=True)
        )
        self.gscs = nn.ModuleList(GSC(d) for d in dims)
        for i, d in enumerate(dims):
            self.add_module(f"norm{i}", nn.InstanceNorm3d(d))
        self.mlps = nn.ModuleList(MlpChannel(d, 2 * d) for d in dims)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        run = partial(checkpointed, enabled=self.checkpointing)
        outs = []
        for i in range(4):
            x = self.stages[i](run(self._down_gsc, i, x))  # the ToM layers checkpoint themselves
            outs.append(run(self._skip, i, x))
        return tuple(outs)

    def _down_gsc(self, i: int, x: Tensor) -> Tensor:
        return self.gscs[i](self.downsample_layers[i](x))

    def _skip(self, i: int, x: Tensor) -> Tensor:
        """Stage ``i``'s skip feature: IN + MLP of its output."""
        return self.mlps[i](getattr(self, f"norm{i}")(x))


class SegMamba(nn.Module):
    """SegMamba for 3D segmentation.

    Args:
        in_channels: input modalities.
        out_channels: segmentation outputs.
        depths: ToM layers per encoder stage.
        feature_sizes: encoder widths.
        hidden_size: width of the bottleneck block (``encoder5``).
        backend: the ToM layers' scan backend, one of
            :data:`~nnunetv2_segresmamba.operators.backends.BACKENDS` ("auto": chosen by the input's
            device and what is installed, as :mod:`~nnunetv2_segresmamba.operators.backends` says).
        checkpointing: activation checkpointing while training (:func:`~.blocks.checkpointed`):
            each encoder stage's downsampling and GSC and its skip, and each UNETR block
            (``encoder1..5``, ``decoder1..5``) keep only their inputs for the backward pass, and
            each ToM layer runs direction by direction (:class:`MambaEncoder`). The
            same state_dict keys; outputs and gradients equal to fp32 rounding while training
            (MambaLayer's), the same outputs without grad.

    Shapes: ``forward(x (B, in_channels, D, H, W)) -> logits (B, out_channels, D, H, W)``. Each
    axis is zero-padded at its end to a multiple of 16 (at least 32) and cropped back; nnU-Net
    trainers round the patch to a multiple of 16 so that nothing is padded.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 13,
        depths: Sequence[int] = (2, 2, 2, 2),
        feature_sizes: Sequence[int] = (48, 96, 192, 384),
        hidden_size: int = 768,
        backend: str = "auto",
        checkpointing: bool = False,
    ):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if len(depths) != 4 or len(feature_sizes) != 4:
            raise ValueError(f"depths and feature_sizes need 4 entries, got {list(depths)}, {list(feature_sizes)}")
        f = list(feature_sizes)
        self.checkpointing = checkpointing
        self.vit = MambaEncoder(in_channels, depths, f, backend, checkpointing)

        def basic(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name="instance", res_block=True)

        def up(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(3, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name="instance",
                                res_block=True)

        self.encoder1, self.encoder2 = basic(in_channels, f[0]), basic(f[0], f[1])
        self.encoder3, self.encoder4 = basic(f[1], f[2]), basic(f[2], f[3])
        self.encoder5 = basic(f[3], hidden_size)
        self.decoder5, self.decoder4 = up(hidden_size, f[3]), up(f[3], f[2])
        self.decoder3, self.decoder2 = up(f[2], f[1]), up(f[1], f[0])
        self.decoder1 = basic(f[0], f[0])
        self.out = UnetOutBlock(3, f[0], out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"SegMamba expects (B, C, D, H, W) input, got shape {tuple(x.shape)}")
        size = x.shape[2:]
        x = pad_to_multiple(x, (SIZE_DIVISOR,) * 3)
        run = partial(checkpointed, enabled=self.checkpointing)
        outs = self.vit(x)
        hidden = run(self.encoder5, outs[3])
        dec = run(self.decoder5, hidden, run(self.encoder4, outs[2]))
        dec = run(self.decoder4, dec, run(self.encoder3, outs[1]))
        dec = run(self.decoder3, dec, run(self.encoder2, outs[0]))
        dec = run(self.decoder2, dec, run(self.encoder1, x))
        return crop_to(self.out(run(self.decoder1, dec)), size)
