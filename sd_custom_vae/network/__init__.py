"""Layer 1, the network: the SD VAE's blocks, encoder and decoder, written from scratch in PyTorch.

Imports only ``base`` of the project (and diffusers, whose attention mixin and processors its attention uses);
``conversion`` and every layer above build on it.
"""

from .architecture import ARCHITECTURE_KEYS, DEFAULT, Architecture, downsampling_factor, validate_architecture
from .attention import AttentionBlock, AttentionBlockProcessor
from .blocks import (
    DownEncoderBlock2D,
    Downsample,
    NearestUpsampleConv2d,
    ResidualBlock,
    UNetMidBlock2D,
    UpDecoderBlock2D,
    Upsample,
)
from .coders import LOGVAR_RANGE, Decoder, Encoder, VAEModules, check_input, reparameterize, split_moments
from .norms import GROUP_NORM_EPS, GroupNorm
from .roles import StreamRole, TileStep

__all__ = [
    "ARCHITECTURE_KEYS", "DEFAULT", "GROUP_NORM_EPS", "LOGVAR_RANGE", "Architecture", "AttentionBlock",
    "AttentionBlockProcessor", "Decoder", "DownEncoderBlock2D", "Downsample", "Encoder", "GroupNorm",
    "NearestUpsampleConv2d", "ResidualBlock", "StreamRole", "TileStep", "UNetMidBlock2D", "UpDecoderBlock2D",
    "Upsample", "VAEModules", "check_input", "downsampling_factor", "reparameterize", "split_moments",
    "validate_architecture",
]
