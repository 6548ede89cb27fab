"""Networks that MONAI does not provide, for use as a bundle's ``network_def``.

InvertedNet (Novikov et al., "Fully Convolutional Architectures for Multiclass
Segmentation in Chest Radiographs", IEEE TMI 37(8), 2018, arXiv:1701.08816) is a
U-Net variant for multi-structure chest radiograph segmentation (lungs, heart,
clavicles). The paper builds it from its "All-Dropout" U-Net (dropout after every
convolution, after the activation) by adding delayed subsampling and by *inverting*
the feature-map counts: it starts with many feature maps and halves them after every
pooling in the contracting path, doubling them after every upsampling in the
expanding path. Its rationale is that rigid anatomy needs many high-resolution
low-level features but few low-resolution abstract ones. Activations are ELUs.

Taken from the paper: ELU activations, dropout after each convolution placed after
the activation, feature maps halving per pooling / doubling per upsampling, U-Net
skip connections by concatenation, no normalisation layers, 3x3 convolutions.

Our reading where the available text is not specific (choices, all configurable):

* Delayed subsampling: ``delay`` extra 3x3 convolutions at full resolution before
  the first pooling (default 2, i.e. one more conv pair than U-Net, so 4 convolutions
  precede the first 2x2 max pooling). Deeper levels have U-Net's two convolutions.
* Upsampling: a 2x2 stride-2 transposed convolution (U-Net's "up-convolution") with
  ELU and no dropout; it maps the level's feature maps to the next level's (x2).
* Dropout rate 0.2 (element-wise ``nn.Dropout``); default channels (256, 128, 64,
  32), i.e. three poolings, for 256x256 inputs.
* Output: a 1x1 convolution to ``out_channels`` raw logits; the softmax or sigmoid
  belongs to the loss and post-processing in the bundle config.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers import Pool
from torch import nn


def _conv_stack(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    num_convs: int,
    kernel_size: int,
    act: tuple | str,
    norm: tuple | str | None,
    dropout: float,
) -> nn.Sequential:
    """``num_convs`` same-padded convolutions, each followed by [norm,] activation, dropout."""
    layers = [
        Convolution(
            spatial_dims,
            in_channels if i == 0 else out_channels,
            out_channels,
            kernel_size=kernel_size,
            act=act,
            norm=norm,
            dropout=dropout if dropout > 0 else None,
            # The paper places dropout after the activation ("NAD", not MONAI's "NDA").
            adn_ordering="NAD",
            bias=norm is None,
        )
        for i in range(num_convs)
    ]
    return nn.Sequential(*layers)


class _UpBlock(nn.Module):
    """Upsample x2, concatenate the skip connection, then a conv stack."""

    def __init__(self, up: nn.Module, convs: nn.Module) -> None:
        super().__init__()
        self.up = up
        self.convs = convs

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class InvertedNet(nn.Module):
    """InvertedNet: a U-Net whose feature maps halve along the contracting path.

    Args:
        spatial_dims: 2 for radiographs, 3 for volumes.
        in_channels: input channels.
        out_channels: output channels, one per class; raw logits.
        channels: feature maps per level, full resolution first; one 2x2 max pooling
            between consecutive levels, so inputs must be divisible by
            ``2 ** (len(channels) - 1)``. The paper's inversion is a halving sequence
            such as (256, 128, 64, 32); (64, 32, 16, 8) is a CPU-friendly variant.
        dropout: dropout probability after every 3x3 convolution (0 disables it).
        delay: extra convolutions at full resolution before the first pooling
            (delayed subsampling); 0 gives U-Net's two.
        convs_per_level: convolutions per level (and per expanding-path level).
        kernel_size: kernel size of those convolutions (odd, same padding).
        act: activation, MONAI ``Act`` name or (name, args); the paper's is ELU.
        norm: MONAI ``Norm`` name or (name, args), or None as in the paper.

    Layout (for tests and inspection): ``encoder[0]`` is the full-resolution conv
    stack, ``encoder[l]`` (l >= 1) is ``Sequential(pool, conv stack)``; ``decoder``
    runs deepest first; ``head`` is the 1x1 output convolution.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 5,
        channels: Sequence[int] = (256, 128, 64, 32),
        dropout: float = 0.2,
        delay: int = 2,
        convs_per_level: int = 2,
        kernel_size: int = 3,
        act: tuple | str = "elu",
        norm: tuple | str | None = None,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"channels needs at least two positive entries, got {channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if delay < 0 or convs_per_level < 1:
            raise ValueError(f"need delay >= 0 and convs_per_level >= 1, got {delay}, {convs_per_level}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")

        def stack(cin: int, cout: int, n: int) -> nn.Sequential:
            return _conv_stack(spatial_dims, cin, cout, n, kernel_size, act, norm, dropout)

        pool = Pool[Pool.MAX, spatial_dims]
        self.divisor = 2 ** (len(channels) - 1)

        encoder = [stack(in_channels, channels[0], convs_per_level + delay)]
        for cin, cout in zip(channels[:-1], channels[1:]):
            encoder.append(nn.Sequential(pool(kernel_size=2, stride=2), stack(cin, cout, convs_per_level)))
        self.encoder = nn.ModuleList(encoder)

        decoder = []
        for level in range(len(channels) - 1, 0, -1):
            cin, cout = channels[level], channels[level - 1]
            up = Convolution(
                spatial_dims, cin, cout, strides=2, kernel_size=2, act=act, norm=norm,
                bias=norm is None, is_transposed=True, padding=0, output_padding=0,
            )
            # The concatenation has the upsampled maps plus the skip's, both ``cout``.
            decoder.append(_UpBlock(up, stack(2 * cout, cout, convs_per_level)))
        self.decoder = nn.ModuleList(decoder)

        self.head = Convolution(spatial_dims, channels[0], out_channels, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(
                    f"InvertedNet: spatial size {list(x.shape[2:])} must be divisible by {self.divisor}"
                )
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the deepest level is the bottleneck, not a skip
        for block in self.decoder:
            x = block(x, skips.pop())
        return self.head(x)
