"""Ovis-U1's parts at its real sizes, from library components with random weights (or tiny, for the CPU).

- LLM: transformers `Qwen3ForCausalLM` shaped as Qwen3-1.7B.
- Visual tokenizer: a SigLIP vision tower shaped as AIMv2-large at 448 px (24 layers, hidden 1024, patch 14:
  1024 patches; the MLP is GELU 1024 -> 4224 -> 1024, the parameters and FLOPs of AIMv2's SwiGLU 2816), then
  Ovis's head: 2x2 patch merge, linear to the visual vocabulary, layer norm, softmax; the probabilities
  weight a visual embedding table into the LLM (256 visual tokens at 448 px).
- Generator: diffusers `FluxTransformer2DModel` shaped as Ovis-U1's "Yak" MMDiT (6 double + 12 single
  blocks, 12 heads x 128), each double block given Yak's extra image-only self-attention; Yak's 2-block
  bidirectional token refiner over the LLM condition; a diffusers `AutoencoderKL` shaped as the Flux VAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, FluxAttnProcessor2_0
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from torch import nn
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM
from transformers.models.siglip.configuration_siglip import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipVisionModel

#: Ovis's visual indicator tokens (image start/end, grid separators) occupy the table's last rows.
VISUAL_INDICATORS = 5
Rope = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ShapedConfig:
    """Every dimension of the stand-in; FULL is Ovis-U1-3B's, TINY runs the same code in a blink."""

    vocab: int
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_head_dim: int
    llm_intermediate: int
    image_size: int
    patch: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    visual_vocab: int
    dit_hidden: int
    dit_heads: int
    double_blocks: int
    single_blocks: int
    rope_axes: tuple[int, int, int]
    refiner_heads: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    vae_groups: int
    latent_channels: int = 16
    #: Ovis merges 2x2 patches into one visual token.
    merge: int = 2

    @property
    def visual_tokens(self) -> int:
        """Visual tokens per image: (side / patch / merge) ** 2."""
        return (self.image_size // self.patch // self.merge) ** 2

    @property
    def condition_dim(self) -> int:
        """The generator's condition: the LLM's last two hidden layers side by side."""
        return 2 * self.llm_hidden


FULL = ShapedConfig(
    vocab=151936,
    llm_hidden=2048,
    llm_layers=28,
    llm_heads=16,
    llm_kv_heads=8,
    llm_head_dim=128,
    llm_intermediate=6144,
    image_size=448,
    patch=14,
    vision_hidden=1024,
    vision_layers=24,
    vision_heads=8,
    vision_intermediate=4224,
    # 16384, not Ovis2's 65536: with 65536 the parts would sum to 3.64B, not the 3.34B of the real build
    # (see gpu_model/shaped_compute.py).
    visual_vocab=16384,
    dit_hidden=1536,
    dit_heads=12,
    double_blocks=6,
    single_blocks=12,
    rope_axes=(16, 56, 56),
    refiner_heads=24,
    vae_channels=(128, 256, 512, 512),
    vae_layers=2,
    vae_groups=32,
)

TINY = ShapedConfig(
    vocab=1024,
    llm_hidden=64,
    llm_layers=2,
    llm_heads=4,
    llm_kv_heads=2,
    llm_head_dim=16,
    llm_intermediate=128,
    image_size=56,
    patch=14,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    vision_intermediate=64,
    visual_vocab=64,
    dit_hidden=64,
    dit_heads=2,
    double_blocks=1,
    single_blocks=1,
    rope_axes=(8, 12, 12),
    refiner_heads=4,
    vae_channels=(8, 16, 16, 16),
    vae_layers=1,
    vae_groups=4,
)


def build_llm(cfg: ShapedConfig, *, eos_token_id: int, pad_token_id: int) -> Qwen3ForCausalLM:
    """Qwen3 decoder with tied embeddings, as Qwen3-1.7B."""
    config = Qwen3Config(
        vocab_size=cfg.vocab,
        hidden_size=cfg.llm_hidden,
        intermediate_size=cfg.llm_intermediate,
        num_hidden_layers=cfg.llm_layers,
        num_attention_heads=cfg.llm_heads,
        num_key_value_heads=cfg.llm_kv_heads,
        head_dim=cfg.llm_head_dim,
        max_position_embeddings=40960,
        sliding_window=None,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attn_implementation="sdpa",
    )
    llm = Qwen3ForCausalLM(config)
    llm.generation_config.eos_token_id = eos_token_id
    llm.generation_config.pad_token_id = pad_token_id
    return llm.eval()


class VisualTokenizer(nn.Module):
    """Vision tower + Ovis's probabilistic head: each merged patch becomes a distribution over the visual
    vocabulary; the embedding table then turns it into one LLM input embedding."""

    def __init__(self, cfg: ShapedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        vision = SiglipVisionConfig(
            image_size=cfg.image_size,
            patch_size=cfg.patch,
            hidden_size=cfg.vision_hidden,
            intermediate_size=cfg.vision_intermediate,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.vision_heads,
            vision_use_head=False,
            attn_implementation="sdpa",
        )
        self.tower = SiglipVisionModel(vision)
        merged = cfg.vision_hidden * cfg.merge**2
        self.head = nn.Linear(merged, cfg.visual_vocab - VISUAL_INDICATORS, bias=False)
        self.head_norm = nn.LayerNorm(cfg.visual_vocab - VISUAL_INDICATORS)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, visual_tokens, visual_vocab] probabilities."""
        patches = self.tower(pixel_values=pixel_values).last_hidden_state
        batch, count, width = patches.shape
        side, m = int(count**0.5), self.cfg.merge
        grid = patches.reshape(batch, side // m, m, side // m, m, width).permute(0, 1, 3, 2, 4, 5)
        merged = grid.reshape(batch, (side // m) ** 2, m * m * width)
        probabilities = torch.softmax(self.head_norm(self.head(merged)), dim=-1)
        return F.pad(probabilities, (0, VISUAL_INDICATORS))


class TokenRefinerBlock(nn.Module):
    """Yak's bidirectional refiner block: self-attention and MLP, gated by the pooled condition."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.SiLU(), nn.Linear(4 * hidden, hidden))
        self.gates = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gate_attn, gate_mlp = self.gates(c)[:, None].chunk(2, dim=-1)
        batch, length, hidden = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, length, 3, self.heads, hidden // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, hidden)
        x = x + gate_attn * self.proj(attended)
        return x + gate_mlp * self.mlp(self.norm2(x))


class TokenRefiner(nn.Module):
    """The 2-block refiner from the LLM condition to the DiT's text tokens, with a class token whose output
    is the pooled vector."""

    def __init__(self, in_dim: int, hidden: int, heads: int, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, hidden)
        self.context = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.blocks = nn.ModuleList(TokenRefinerBlock(hidden, heads) for _ in range(depth))

    def forward(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, in_dim] -> text tokens [B, L, hidden] and pooled [B, hidden]."""
        c = self.context(condition.mean(dim=1))
        x = self.embed(condition)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x, c)
        return x[:, 1:], x[:, 0]


class YakDoubleBlock(nn.Module):
    """A Flux double-stream block plus Yak's image-only self-attention (SD3.5 MMDiT-X style).

    Yak adds the image self-attention output to the stream beside the joint attention's, both computed from
    the block's input; here it is added just before the Flux block runs: the same work and parameters (a
    third modulation triple, QKV, QK norms and output projection), in a slightly different order.
    """

    def __init__(self, block: nn.Module, dim: int, heads: int) -> None:
        super().__init__()
        self.block = block
        self.modulation = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(
            query_dim=dim,
            dim_head=dim // heads,
            heads=heads,
            out_dim=dim,
            bias=True,
            qk_norm="rms_norm",
            eps=1e-6,
            processor=FluxAttnProcessor2_0(),
        )

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor, rope: Rope
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.modulation(F.silu(temb))[:, None].chunk(3, dim=-1)
        text = encoder_hidden_states.shape[1]
        image_rope = (rope[0][text:], rope[1][text:])
        attended = self.self_attn(
            hidden_states=self.norm(hidden_states) * (1 + scale) + shift, image_rotary_emb=image_rope
        )
        hidden_states = hidden_states + gate * self.self_attn.to_out[0](attended)
        out: tuple[torch.Tensor, torch.Tensor] = self.block(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            temb=temb,
            image_rotary_emb=rope,
        )
        return out


class ShapedDiT(nn.Module):
    """Yak-shaped flow-matching DiT over packed 2x2 latent patches; one call is one pass."""

    def __init__(self, cfg: ShapedConfig) -> None:
        super().__init__()
        head_dim = cfg.dit_hidden // cfg.dit_heads
        flux = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * cfg.latent_channels,
            num_layers=cfg.double_blocks,
            num_single_layers=cfg.single_blocks,
            attention_head_dim=head_dim,
            num_attention_heads=cfg.dit_heads,
            joint_attention_dim=cfg.dit_hidden,
            pooled_projection_dim=cfg.dit_hidden,
            guidance_embeds=False,
            axes_dims_rope=cfg.rope_axes,
        )
        flux.context_embedder = nn.Identity()  # the refiner hands over tokens of the DiT's width
        flux.transformer_blocks = nn.ModuleList(
            YakDoubleBlock(block, cfg.dit_hidden, cfg.dit_heads) for block in flux.transformer_blocks
        )
        self.flux = flux
        self.refiner = TokenRefiner(cfg.condition_dim, cfg.dit_hidden, cfg.refiner_heads)

    def rope(self, text_tokens: int, image_ids: torch.Tensor) -> Rope:
        """Rotary tables of one pass: text tokens at position 0, then the image ids (frame, row, column)."""
        text_ids = torch.zeros(text_tokens, 3, device=image_ids.device, dtype=image_ids.dtype)
        cos, sin = self.flux.pos_embed(torch.cat([text_ids, image_ids]))
        return cos, sin

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        pooled: torch.Tensor,
        timestep: torch.Tensor,
        rope: Rope,
    ) -> torch.Tensor:
        """Velocity for `image` [B, N, 4 * latent] given refined `text` [B, L, hidden] and `pooled`."""
        flux = self.flux
        hidden = flux.x_embedder(image)
        temb = flux.time_text_embed(timestep.to(hidden.dtype) * 1000, pooled)
        for double in flux.transformer_blocks:
            text, hidden = double(hidden, text, temb, rope)
        hidden = torch.cat([text, hidden], dim=1)
        for single in flux.single_transformer_blocks:
            hidden = single(hidden_states=hidden, temb=temb, image_rotary_emb=rope)
        hidden = flux.norm_out(hidden[:, text.shape[1] :], temb)
        velocity: torch.Tensor = flux.proj_out(hidden)
        return velocity


def build_vae(cfg: ShapedConfig) -> AutoencoderKL:
    """The Flux VAE's shape: 8x downsampling, 16 latent channels, no quant convs."""
    levels = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.vae_channels,
        layers_per_block=cfg.vae_layers,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_groups,
        sample_size=1024,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
