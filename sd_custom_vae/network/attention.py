"""The VAE's self-attention block, with diffusers' attention-processor interface.

One head of attention over the H·W positions of a feature map, with a residual connection, as the
SD VAE's mid blocks have it. The computation is a swappable *processor* (``set_processor``,
``fuse_projections``), as on diffusers' ``Attention``; diffusers' own ``AttnProcessor``,
``AttnProcessor2_0`` and ``FusedAttnProcessor2_0`` run on it too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0
from torch import nn

from ..base.errors import UserError
from .norms import group_norm
from .roles import StreamRole, TileStep


class AttentionBlockProcessor:
    """The default computation of an ``AttentionBlock``: one head of SDPA over the H·W positions.

    Same arithmetic as diffusers' ``AttnProcessor2_0`` on a VAE attention block, plus an in-place
    residual sum without autograd; uses the fused ``to_qkv`` projection after ``fuse_projections()``.
    """

    def __call__(self, attn: AttentionBlock, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise UserError("a VAE attention block is self-attention without a mask")
        x = hidden_states
        batch, channels, height, width = x.shape
        tokens = attn.group_norm(x).flatten(2).transpose(1, 2)  # (batch, H·W, channels)
        if attn.fused_projections:
            q, k, v = attn.to_qkv(tokens).unsqueeze(1).chunk(3, dim=-1)
        else:
            # A head axis of size one: SDPA's fused kernels want (batch, heads, tokens, dim).
            q, k, v = (proj(tokens).unsqueeze(1) for proj in (attn.to_q, attn.to_k, attn.to_v))
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = attn.to_out[0](attended).transpose(1, 2).reshape(batch, channels, height, width)
        # `out` is a channels-last view; with it first, the sum (and the convs after it) stay channels-last,
        # which is both faster on CPU and the exact arithmetic diffusers does.
        return out.add_(x) if not torch.is_grad_enabled() else out + x


class AttentionBlock(nn.Module, AttentionModuleMixin):
    """Single-head self-attention over the H·W positions of a feature map, with a residual connection.

    Its modules carry diffusers' names (``group_norm``, ``to_q``, ``to_k``, ``to_v``, ``to_out.0``), so
    state dicts, PEFT ``target_modules`` and code that walks a VAE's attention find them where they look.
    The computation is a swappable *processor*, as in diffusers (``set_processor``, ``fuse_projections``).
    Besides ours, diffusers' own ``AttnProcessor``, ``AttnProcessor2_0`` and ``FusedAttnProcessor2_0``
    run on it: the attributes below are what they read from an ``Attention`` module, spelled in their
    terms for one self-attention head with a residual.

    Args:
        channels: Channels of the feature map (and of the query, key and value).
        groups: GroupNorm's groups, for the norm before the projections.
    """

    _default_processor_cls = AttentionBlockProcessor
    _available_processors = [AttentionBlockProcessor, AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0]

    heads = 1
    residual_connection = True
    rescale_output_factor = 1.0
    upcast_attention = False
    upcast_softmax = True  # as diffusers builds the VAE's attention
    is_cross_attention = False
    use_bias = True
    spatial_norm = norm_q = norm_k = norm_cross = None
    head_to_batch_dim = Attention.head_to_batch_dim
    batch_to_head_dim = Attention.batch_to_head_dim
    get_attention_scores = Attention.get_attention_scores
    prepare_attention_mask = Attention.prepare_attention_mask

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        # (projection, dropout), as diffusers' processors index it; the VAE's dropout is 0
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])
        self.scale = channels**-0.5
        self.set_processor(AttentionBlockProcessor())

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.processor(self, x, **kwargs)

    def tile_steps(self) -> list[TileStep]:
        return [TileStep(self, self.to_out[0].out_features, whole=True)]

    def stream_roles(self) -> list[StreamRole]:
        # reads the stream through its norm, adds its projection's output to it
        out = self.to_out[0]
        return [StreamRole(reads=(self.group_norm,), writes=(out,), measured=(self, out))]
