"""The shape of the network: ``AutoencoderKL``'s architecture arguments, their defaults, and the rules they obey.

Written once here. The encoder, the decoder and ``ScratchVAE`` take an ``Architecture``; ``CustomAutoencoderKL``
takes these keywords (diffusers' config is its constructor's signature: a test holds it equal to these fields) and
builds one; ``conversion`` reads them from files and infers them from tensor shapes; every check of them is
``validate_architecture``, run when an ``Architecture`` is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from ..base.errors import UserError


@dataclass(frozen=True)
class Architecture:
    """Everything the weights' shapes depend on, with diffusers' ``AutoencoderKL`` defaults.

    Made only with valid values: the constructor runs ``validate_architecture`` (a ``UserError`` naming the key)
    and stores ``block_out_channels`` as a tuple.

    Args:
        in_channels: Channels of the images the encoder reads.
        out_channels: Channels of the images the decoder writes.
        block_out_channels: Channels of each resolution level, first (full resolution) to last; every level but
            the last halves the resolution.
        layers_per_block: Residual blocks per encoder level; the decoder has one more per level.
        latent_channels: Channels of the latent.
        norm_num_groups: GroupNorm's groups; every entry of ``block_out_channels`` is a multiple of it.
        mid_block_add_attention: Whether the mid blocks hold a self-attention layer.
        use_quant_conv: Whether a 1×1 conv follows the encoder (``quant_conv``).
        use_post_quant_conv: Whether a 1×1 conv precedes the decoder (``post_quant_conv``).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)  # channels of each resolution level, first to last
    layers_per_block: int = 1  # residual blocks per encoder level (the decoder has one more)
    latent_channels: int = 4
    norm_num_groups: int = 32  # GroupNorm groups: not visible in the weights
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    def __post_init__(self):
        validate_architecture(self.as_dict())
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))  # a list read from JSON

    @classmethod
    def from_config(cls, config: Mapping) -> Architecture:
        """The architecture a config describes (a ``config.json``'s, a ``ScratchVAE``'s): its architecture keys,
        the defaults for those it leaves out; other keys are ignored.

        Args:
            config: A mapping of config keys to values.
        """
        return cls(**{field.name: config[field.name] for field in fields(cls) if field.name in config})

    def as_dict(self) -> dict:
        """The fields as a dict of keywords, in declaration order."""
        return asdict(self)


# Upper bounds: far above any published VAE (SD, SDXL, FLUX: 4 levels of at most 512 channels, 2 blocks per level,
# 16 latent channels, 84 million parameters), and low enough that a typo in a config.json is refused at once rather
# than found by building a network that fills the memory.
MAX_CHANNELS = 8192  # of any layer, the latent included, and GroupNorm's groups
MAX_LAYERS_PER_BLOCK = 32
MAX_LEVELS = 10  # 2⁹ = 512× downsampling
MAX_PARAMETERS = 2_000_000_000


def downsampling_factor(block_out_channels) -> int:
    """Image side / latent side: every level but the last halves the resolution."""
    return 2 ** (len(block_out_channels) - 1)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_architecture(config: Mapping) -> None:
    """Raise ``ValueError`` naming the key, the value and what is expected, for every architecture key present.

    Types are strict (``"4"`` is not a number, ``1`` is not ``true``): a config file that says otherwise was
    written by something else and should be looked at, not silently coerced.
    """
    for key in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        if key in config and (not is_int(config[key]) or config[key] < 1):
            raise UserError(f"config {key} must be a positive integer, got {config[key]!r}")
        most = MAX_LAYERS_PER_BLOCK if key == "layers_per_block" else MAX_CHANNELS
        if key in config and config[key] > most:
            raise UserError(f"config {key} must be at most {most}, got {config[key]!r}: check the config")
    for key in ("mid_block_add_attention", "use_quant_conv", "use_post_quant_conv"):
        if key in config and not isinstance(config[key], bool):
            raise UserError(f"config {key} must be true or false, got {config[key]!r}")
    if "block_out_channels" in config:
        channels = config["block_out_channels"]
        groups = config.get("norm_num_groups", Architecture.norm_num_groups)
        if not isinstance(channels, (list, tuple)) or not channels:
            raise UserError(f"config block_out_channels must list at least one level, got {channels!r}")
        if len(channels) > MAX_LEVELS:
            raise UserError(f"config block_out_channels lists {len(channels)} levels, at most {MAX_LEVELS} "
                            f"(a {downsampling_factor(range(MAX_LEVELS))}× downsampling): check the config")
        for value in channels:
            if not is_int(value) or value < 1 or value % groups:
                raise UserError(
                    f"config block_out_channels entry {value!r} (in {tuple(channels)}) is not a positive "
                    f"multiple of norm_num_groups={groups}: GroupNorm splits channels into that many groups"
                )
            if value > MAX_CHANNELS:
                raise UserError(f"config block_out_channels entry {value} (in {tuple(channels)}) is more than "
                                f"{MAX_CHANNELS} channels: check the config")
        layers = config.get("layers_per_block", Architecture.layers_per_block)
        if approximate_parameters(channels, layers) > MAX_PARAMETERS:
            raise UserError(
                f"config block_out_channels {list(channels)} with layers_per_block {layers} make a network of about "
                f"{approximate_parameters(channels, layers) / 1e9:.3g} billion parameters, more than the "
                f"{MAX_PARAMETERS / 1e9:g} billion built here (SD's VAE has 84 million): check the config"
            )


def approximate_parameters(block_out_channels, layers_per_block: int) -> int:
    """The parameters of a VAE of this shape, within about 10% (SD's: 76 million estimated, 84 million built):
    its 3×3 convolutions, each residual block two of them, and the mid blocks' attention."""
    per_level = sum((2 * layers_per_block + 1) * 18 * c * c for c in block_out_channels)  # encoder + decoder blocks
    last = block_out_channels[-1]
    return per_level + 2 * (2 * 18 + 4) * last * last  # two mid blocks: two residual blocks and attention each


# Made last: making an Architecture runs validate_architecture.
DEFAULT = Architecture()
ARCHITECTURE_KEYS = tuple(field.name for field in fields(Architecture))
