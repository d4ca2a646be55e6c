"""U-Mamba (Ma, Li and Wang, 2024; bowang-lab/U-Mamba): U-Mamba Bot and U-Mamba Enc, 2D and 3D.

A residual U-Net (nnU-Net's ResEnc blocks) with one Mamba layer at the bottleneck (Bot) or one
after every encoder stage (Enc). Written from the official ``nnunetv2/nets/UMamba{Bot,Enc}_{2d,3d}.py``;
module names follow them, so official checkpoints load with ``strict=True`` (the decoder
holds the encoder as nnU-Net's decoders do: its weights appear twice in the state_dict,
under ``encoder.`` and ``decoder.encoder.``). The Mamba layer is the ToM operator scanning
forward only (mamba_ssm's ``Mamba`` and its parameter names), on any of its backends.

What the official constructors do, kept here:

- the deeper half of the encoder stages get 1 block, and so do the shallow decoder stages, from
  decoder index ceil((n - 1) / 2 + 0.5) on (index 0 is the deepest; :func:`official_block_counts`);
- the stem is a residual block and ``n_blocks_per_stage[0] - 1`` ResNet-D blocks at stage 0's
  width, before stage 0;
- Enc: a stage whose feature map has no more voxels than channels scans its channels as tokens
  (each token a whole feature map); the feature map sizes come from ``input_size``, the patch;
- 2D only: the last decoder stage takes no skip (its input is the upsampled map alone), and the
  2D Enc has Mamba layers on every other stage, the deepest included (identity elsewhere);
- the Mamba layer runs in fp32 with autocast off and adds no residual (the official layers cast
  fp16 inputs, and only the 3D Enc's bf16 too; this one casts any input, where the others fail).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import Tensor

from nnunetv2_segresmamba.networks.blocks import SPATIAL_DIMS, checkpointed, layers
from nnunetv2_segresmamba.networks.planning import NNUNET_NORM_KWARGS as NORM_KWARGS
from nnunetv2_segresmamba.operators.directions import DIRECTIONS, FORWARD
from nnunetv2_segresmamba.operators.tom import TriOrientedMamba

Sizes = Sequence[Sequence[int]]  # one entry per stage, one value per spatial axis
NONLIN_KWARGS = {"inplace": True}


class UMambaLayer(nn.Module):
    """U-Mamba's Mamba layer: LayerNorm, then one forward Mamba scan; no residual.

    ``forward(x (B, C, *spatial)) -> (B, C, *spatial)`` in fp32, with autocast off.
    With ``channel_token=False`` the sequence is the L = prod(spatial) positions, each a token
    of C = ``dim`` values; with ``channel_token=True`` it is the C channels, each a token of the
    whole feature map (``dim`` = prod(spatial)).
    """

    def __init__(self, dim: int, channel_token: bool = False, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 backend: str = "auto"):
        super().__init__()
        self.dim, self.channel_token = dim, channel_token
        self.norm = nn.LayerNorm(dim)
        self.mamba = TriOrientedMamba(dim, d_state, d_conv, expand, backend, directions=(DIRECTIONS[FORWARD],))

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, *spatial = x.shape
        width = math.prod(spatial) if self.channel_token else channels
        if width != self.dim:
            what = "voxels per feature map" if self.channel_token else "channels"
            raise ValueError(f"this Mamba layer takes {self.dim} {what}, got input {tuple(x.shape)}. A U-Mamba Enc "
                             "scans channels as tokens where its feature maps are small: it takes inputs of the "
                             "size it was built for (input_size, the patch) only.")
        with torch.autocast(device_type=x.device.type, enabled=False):
            tokens = x.float().flatten(2)  # (B, C, L)
            if self.channel_token:
                return self.mamba(self.norm(tokens), num_slices=1).reshape(batch, channels, *spatial)
            out = self.mamba(self.norm(tokens.transpose(1, 2)), num_slices=1)  # (B, L, C)
            return out.transpose(1, 2).reshape(batch, channels, *spatial)


class BasicResBlock(nn.Module):
    """Conv -> IN -> LeakyReLU -> Conv -> IN, + the input (through a 1x1 conv ``conv3`` when
    it changes width or stride), -> LeakyReLU. Convs with bias, padding k // 2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] | int = 1, use_1x1conv: bool = True):
        super().__init__()
        ops = layers(len(kernel_size))
        padding = [k // 2 for k in kernel_size]
        self.conv1 = ops.conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.norm1 = ops.instance_norm(out_channels, **NORM_KWARGS)
        self.act1 = nn.LeakyReLU(**NONLIN_KWARGS)
        self.conv2 = ops.conv(out_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = ops.instance_norm(out_channels, **NORM_KWARGS)
        self.act2 = nn.LeakyReLU(**NONLIN_KWARGS)
        self.conv3 = ops.conv(in_channels, out_channels, kernel_size=1, stride=stride) if use_1x1conv else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + (self.conv3(x) if self.conv3 is not None else x))


def residual_stage(in_channels: int, out_channels: int, kernel_size: Sequence[int], stride: Sequence[int] | int,
                   num_blocks: int) -> nn.Sequential:
    """A :class:`BasicResBlock` (with its 1x1 conv) then ``num_blocks - 1`` ResNet-D blocks."""
    ops = layers(len(kernel_size))
    more = [BasicBlockD(ops.conv, out_channels, out_channels, kernel_size, 1, conv_bias=True,
                        norm_op=ops.instance_norm, norm_op_kwargs=NORM_KWARGS, nonlin=nn.LeakyReLU,
                        nonlin_kwargs=NONLIN_KWARGS) for _ in range(num_blocks - 1)]
    return nn.Sequential(BasicResBlock(in_channels, out_channels, kernel_size, stride), *more)


class UpsampleLayer(nn.Module):
    """Nearest-neighbour upsampling by ``scale``, then a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, scale: Sequence[int]):
        super().__init__()
        self.conv = layers(len(scale)).conv(in_channels, out_channels, kernel_size=1)
        self.scale = [float(s) for s in scale]

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class ResidualEncoder(nn.Module):
    """Stem and residual stages; ``forward(x (B, C_in, *patch))`` gives every stage's output (the
    skips, (B, features_per_stage[s], *patch / strides up to s)), each through its
    ``mamba_layers`` entry when given (U-Mamba Enc). With :attr:`checkpointing` the stem and each
    stage (with its Mamba layer) run under activation checkpointing while training."""

    checkpointing = False

    def __init__(self, in_channels: int, features_per_stage: Sequence[int], kernel_sizes: Sizes, strides: Sizes,
                 n_blocks_per_stage: Sequence[int], mamba_layers: Sequence[nn.Module] | None = None):
        super().__init__()
        self.output_channels = list(features_per_stage)
        self.kernel_sizes, self.strides = [list(k) for k in kernel_sizes], [list(s) for s in strides]
        self.stem = residual_stage(in_channels, features_per_stage[0], kernel_sizes[0], 1, n_blocks_per_stage[0])
        widths_in = [features_per_stage[0], *features_per_stage[:-1]]
        self.stages = nn.ModuleList(
            residual_stage(c_in, c_out, k, s, n)
            for c_in, c_out, k, s, n in zip(widths_in, features_per_stage, kernel_sizes, strides, n_blocks_per_stage)
        )
        self.mamba_layers = None if mamba_layers is None else nn.ModuleList(mamba_layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = checkpointed(self.stem, x, enabled=self.checkpointing)
        skips = []
        for s in range(len(self.stages)):
            x = checkpointed(self._stage, s, x, enabled=self.checkpointing)
            skips.append(x)
        return skips

    def _stage(self, s: int, x: Tensor) -> Tensor:
        x = self.stages[s](x)
        return x if self.mamba_layers is None else self.mamba_layers[s](x)


class ResidualDecoder(nn.Module):
    """Upsample, concatenate the skip, residual stage, per resolution; a 1x1 segmentation conv
    per stage. ``forward(skips)`` (the encoder's) gives the logits (B, num_classes, *patch), or
    with ``deep_supervision`` those of every decoder stage, highest resolution first.
    ``skip_last=False`` (the 2D U-Mambas): the last stage takes the upsampled map alone. With
    :attr:`checkpointing` each stage (upsampling, concatenation, residual blocks) runs under
    activation checkpointing while training."""

    checkpointing = False

    def __init__(self, encoder: ResidualEncoder, num_classes: int, n_conv_per_stage: Sequence[int],
                 deep_supervision: bool, skip_last: bool = True):
        super().__init__()
        self.deep_supervision, self.skip_last = deep_supervision, skip_last
        self.encoder = encoder  # registered, as nnU-Net's decoders do: official keys decoder.encoder.*
        widths, n = encoder.output_channels, len(encoder.output_channels)
        conv = layers(len(encoder.strides[0])).conv
        self.upsample_layers = nn.ModuleList(UpsampleLayer(widths[-s], widths[-(s + 1)], encoder.strides[-s])
                                             for s in range(1, n))
        self.stages = nn.ModuleList(
            residual_stage(widths[-(s + 1)] * (1 if s == n - 1 and not skip_last else 2), widths[-(s + 1)],
                           encoder.kernel_sizes[-(s + 1)], 1, n_conv_per_stage[s - 1])
            for s in range(1, n)
        )
        self.seg_layers = nn.ModuleList(conv(widths[-(s + 1)], num_classes, 1, 1, 0, bias=True) for s in range(1, n))

    def forward(self, skips: list[Tensor]) -> Tensor | list[Tensor]:
        x, outputs = skips[-1], []
        last = len(self.stages) - 1
        for s in range(len(self.stages)):
            skip = skips[-(s + 2)] if s < last or self.skip_last else None
            x = checkpointed(self._stage, s, x, skip, enabled=self.checkpointing)
            if self.deep_supervision or s == last:
                outputs.append(self.seg_layers[s](x))
        return outputs[::-1] if self.deep_supervision else outputs[0]

    def _stage(self, s: int, x: Tensor, skip: Tensor | None) -> Tensor:
        x = self.upsample_layers[s](x)
        return self.stages[s](x if skip is None else torch.cat((x, skip), 1))


def official_block_counts(n_blocks_per_stage: Sequence[int], n_conv_per_stage_decoder: Sequence[int]
                          ) -> tuple[list[int], list[int]]:
    """The block counts U-Mamba's constructors build from the plans' (which they overwrite in
    place): 1 block in encoder stages ceil(n / 2) .. n - 1 and in decoder stages
    ceil((n - 1) / 2 + 0.5) .. n - 2 (decoder stage 0 is the deepest)."""
    n = len(n_blocks_per_stage)
    encoder = [b if s < math.ceil(n / 2) else 1 for s, b in enumerate(n_blocks_per_stage)]
    decoder = [b if s < math.ceil((n - 1) / 2 + 0.5) else 1 for s, b in enumerate(n_conv_per_stage_decoder)]
    return encoder, decoder


def feature_map_sizes(input_size: Sequence[int], strides: Sizes) -> list[list[int]]:
    """Each stage's feature map for ``input_size``, as U-Mamba Enc computes it (floor division)."""
    sizes, size = [], list(input_size)
    for stride in strides:
        size = [i // j for i, j in zip(size, stride)]
        sizes.append(size)
    return sizes


class _UMamba(nn.Module):
    """What U-Mamba Bot and Enc share: arguments, checks, block counts, encoder and decoder."""

    def __init__(self, input_channels: int, num_classes: int, features_per_stage: Sequence[int],
                 kernel_sizes: Sizes, strides: Sizes, n_blocks_per_stage: Sequence[int],
                 n_conv_per_stage_decoder: Sequence[int], deep_supervision: bool = False,
                 mamba_layers: Sequence[nn.Module] | None = None, checkpointing: bool = False):
        super().__init__()
        spatial_dims = len(kernel_sizes[0])
        _check_stage_lists(features_per_stage, kernel_sizes, strides, n_blocks_per_stage, n_conv_per_stage_decoder,
                           spatial_dims)
        blocks, decoder_blocks = official_block_counts(n_blocks_per_stage, n_conv_per_stage_decoder)
        self.spatial_dims = spatial_dims
        self.arch_kwargs = {  # what a checkpoint records of this network (see the trainers)
            "features_per_stage": list(features_per_stage), "kernel_sizes": [list(k) for k in kernel_sizes],
            "strides": [list(s) for s in strides], "n_blocks_per_stage": list(n_blocks_per_stage),
            "n_conv_per_stage_decoder": list(n_conv_per_stage_decoder), "checkpointing": bool(checkpointing),
        }
        self.encoder = ResidualEncoder(input_channels, features_per_stage, kernel_sizes, strides, blocks, mamba_layers)
        self.decoder = ResidualDecoder(self.encoder, num_classes, decoder_blocks, deep_supervision,
                                       skip_last=spatial_dims == 3)
        self.encoder.checkpointing = self.decoder.checkpointing = bool(checkpointing)

    def initialize(self) -> _UMamba:
        """nnU-Net's He initialisation (``InitWeights_He(1e-2)``: convs only, zero biases), as the
        official builders apply it. Returns the network."""
        self.apply(InitWeights_He(1e-2))
        return self


class UMambaBot(_UMamba):
    """U-Mamba Bot: a residual U-Net with one :class:`UMambaLayer` on the deepest feature map.

    Args:
        input_channels, num_classes: channels in and classes out.
        features_per_stage, kernel_sizes, strides: per stage, as nnU-Net plans them
            (``strides[0]`` is usually all ones); 2D or 3D as the kernels have 2 or 3 values.
        n_blocks_per_stage, n_conv_per_stage_decoder: the plans' block counts; the official rule
            keeps those of the shallower half of the encoder stages and of the deeper half of the
            decoder stages, and builds 1 block in the others (:func:`official_block_counts`).
        deep_supervision: return every decoder resolution's logits, highest first.
        mamba: False builds the "No-Mamba Base" control (the Mamba layer is identity).
        backend: the Mamba layer's scan backend, one of
            :data:`~nnunetv2_segresmamba.operators.backends.BACKENDS`.
        checkpointing: activation checkpointing while training: the stem, each encoder stage and
            each decoder stage (upsampling, concatenation, residual blocks) keep only their inputs
            for the backward pass and run again there; the Mamba layer on the deepest map and the
            segmentation convs are not checkpointed. The same outputs, gradients and state_dict
            keys; recorded in ``arch_kwargs``, which a checkpoint loads whatever it says.

    Shapes: ``forward(x (B, input_channels, *patch)) -> (B, num_classes, *patch)`` (a list of
    such logits at falling resolutions with deep supervision). Every axis of the patch must be a
    multiple of its strides' product, as nnU-Net plans it.
    """

    def __init__(self, input_channels: int, num_classes: int, features_per_stage: Sequence[int],
                 kernel_sizes: Sizes, strides: Sizes, n_blocks_per_stage: Sequence[int],
                 n_conv_per_stage_decoder: Sequence[int], deep_supervision: bool = False, mamba: bool = True,
                 backend: str = "auto", checkpointing: bool = False):
        super().__init__(input_channels, num_classes, features_per_stage, kernel_sizes, strides, n_blocks_per_stage,
                         n_conv_per_stage_decoder, deep_supervision, checkpointing=checkpointing)
        self.mamba_layer = UMambaLayer(features_per_stage[-1], backend=backend) if mamba else nn.Identity()
        self.arch_kwargs["mamba"] = mamba

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        skips = self.encoder(x)
        skips[-1] = self.mamba_layer(skips[-1])
        return self.decoder(skips)


class UMambaEnc(_UMamba):
    """U-Mamba Enc: a residual U-Net with a :class:`UMambaLayer` after every encoder stage (in 2D,
    after every other stage, the deepest included).

    Args: those of :class:`UMambaBot` but ``mamba``, and ``input_size``: the patch. Each stage's
    feature map size follows from it; where a map has no more voxels than channels, that stage's
    Mamba layer takes the channels as its tokens. The network then takes inputs of this size only.

    Shapes: ``forward(x (B, input_channels, *input_size)) -> (B, num_classes, *input_size)``.
    """

    def __init__(self, input_channels: int, num_classes: int, input_size: Sequence[int],
                 features_per_stage: Sequence[int], kernel_sizes: Sizes, strides: Sizes,
                 n_blocks_per_stage: Sequence[int], n_conv_per_stage_decoder: Sequence[int],
                 deep_supervision: bool = False, backend: str = "auto", checkpointing: bool = False):
        if len(input_size) != len(kernel_sizes[0]):
            raise ValueError(f"input_size {list(input_size)} needs one value per axis of the kernels "
                             f"{list(kernel_sizes[0])}")
        mamba_layers = [self._mamba_layer(s, size, c, len(strides), backend)
                        for s, (size, c) in enumerate(zip(feature_map_sizes(input_size, strides), features_per_stage))]
        super().__init__(input_channels, num_classes, features_per_stage, kernel_sizes, strides, n_blocks_per_stage,
                         n_conv_per_stage_decoder, deep_supervision, mamba_layers, checkpointing)
        self.arch_kwargs["input_size"] = list(input_size)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        return self.decoder(self.encoder(x))

    @staticmethod
    def _mamba_layer(stage: int, size: Sequence[int], channels: int, n_stages: int, backend: str) -> nn.Module:
        """The Mamba layer after ``stage``, whose feature map is ``size``: over its voxels, or over
        its channels where it has no more voxels than channels; in 2D identity on every other stage."""
        if len(size) == 2 and stage % 2 == n_stages % 2:  # 2D: every other stage, the deepest included
            return nn.Identity()
        voxels = math.prod(size)
        channel_token = voxels <= channels
        return UMambaLayer(voxels if channel_token else channels, channel_token, backend=backend)


def _check_stage_lists(features: Sequence[int], kernels: Sizes, strides: Sizes, blocks: Sequence[int],
                       decoder_blocks: Sequence[int], spatial_dims: int) -> None:
    n = len(features)
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"kernel sizes need 2 or 3 values (2D or 3D), got {list(kernels[0])}")
    if n < 2 or len(kernels) != n or len(strides) != n or len(blocks) != n or len(decoder_blocks) != n - 1:
        raise ValueError(
            f"U-Mamba needs one features_per_stage, kernel_sizes, strides and n_blocks_per_stage entry per stage (at "
            f"least 2) and one n_conv_per_stage_decoder entry fewer; got {n}, {len(kernels)}, {len(strides)}, "
            f"{len(blocks)} and {len(decoder_blocks)}"
        )
    if any(len(k) != spatial_dims for k in kernels) or any(len(s) != spatial_dims for s in strides):
        raise ValueError(f"every kernel size and stride needs {spatial_dims} values: {list(kernels)}, {list(strides)}")


def arch_kwargs_for_plan(architecture_kwargs: dict) -> dict:
    """The U-Mamba arguments of an nnU-Net 2.8 configuration, from its ``architecture``'s
    ``arch_kwargs`` (``ConfigurationManager.network_arch_init_kwargs``): the widths, kernels and
    strides as planned, and the block counts of the encoder (``n_conv_per_stage`` in nnU-Net's
    default plans, ``n_blocks_per_stage`` in the ResEnc plans) and of the decoder."""
    kwargs = architecture_kwargs
    blocks = kwargs.get("n_blocks_per_stage", kwargs.get("n_conv_per_stage"))
    required = ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage_decoder")
    missing = [key for key in required if key not in kwargs] + (["n_conv_per_stage"] if blocks is None else [])
    if missing:
        raise ValueError(f"the plans' architecture lacks {missing}: U-Mamba is built from U-Net plans (nnU-Net's "
                         "default planner or a ResEnc planner); plan the dataset with nnUNetv2_plan_and_preprocess")
    n = len(kwargs["features_per_stage"])
    decoder_blocks = kwargs["n_conv_per_stage_decoder"]
    blocks = [blocks] * n if isinstance(blocks, int) else blocks
    decoder_blocks = [decoder_blocks] * (n - 1) if isinstance(decoder_blocks, int) else decoder_blocks
    return {
        "features_per_stage": list(kwargs["features_per_stage"]),
        "kernel_sizes": [list(k) for k in kwargs["kernel_sizes"]],
        "strides": [list(s) for s in kwargs["strides"]],
        "n_blocks_per_stage": list(blocks),
        "n_conv_per_stage_decoder": list(decoder_blocks),
    }
