"""Tiny random-weight diffusers pipelines: SD3 (MMDiT, flow matching) text-to-image, InstructPix2Pix edits.

Both share one 8x-downsampling, 16-channel VAE, the shape of the Flux VAE Ovis-U1 decodes with.
"""

from __future__ import annotations

from typing import Any

# Imported from their modules: the package roots' lazy exports look like dummy objects to mypy.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix import (
    StableDiffusionInstructPix2PixPipeline,
)
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import StableDiffusion3Pipeline
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from transformers.models.clip.configuration_clip import CLIPTextConfig
from transformers.models.clip.modeling_clip import CLIPTextModel, CLIPTextModelWithProjection
from transformers.models.clip.tokenization_clip_fast import CLIPTokenizerFast

#: Pixels per latent cell: image sides must be multiples of this.
VAE_SCALE = 8
LATENT_CHANNELS = 16
TEXT_HIDDEN = 32


def _text_config(tokenizer: CLIPTokenizerFast, projection_dim: int | None = None) -> CLIPTextConfig:
    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_vae() -> AutoencoderKL:
    """A four-level VAE (8x downsampling) with 16 latent channels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=64,
        shift_factor=0.0,  # SD3 reads it
    ).eval()


def build_text_to_image(tokenizer: CLIPTokenizerFast, vae: AutoencoderKL) -> StableDiffusion3Pipeline:
    """SD3: two CLIP text encoders (no T5) conditioning a 2-layer MMDiT, Euler flow matching."""
    text_encoders = [
        CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=TEXT_HIDDEN)).eval()
        for _ in range(2)
    ]
    transformer = SD3Transformer2DModel(
        sample_size=64 // VAE_SCALE,
        patch_size=1,  # one token per latent cell keeps sizes at multiples of 8 pixels
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states side by side
        caption_projection_dim=64,  # = heads * head dim
        pooled_projection_dim=2 * TEXT_HIDDEN,
        pos_embed_max_size=96,
    ).eval()
    # Passed as a dict: diffusers annotates these parameters with transformers' dummy classes.
    components: dict[str, Any] = {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae,
        "text_encoder": text_encoders[0],
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoders[1],
        "tokenizer_2": tokenizer,
        "text_encoder_3": None,
        "tokenizer_3": None,
    }
    pipeline = StableDiffusion3Pipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_editor(tokenizer: CLIPTokenizerFast, vae: AutoencoderKL) -> StableDiffusionInstructPix2PixPipeline:
    """InstructPix2Pix: a UNet fed noise and source latents side by side, with text and image guidance."""
    unet = UNet2DConditionModel(
        sample_size=64 // VAE_SCALE,
        in_channels=2 * LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": CLIPTextModel(_text_config(tokenizer)).eval(),
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": EulerDiscreteScheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    pipeline = StableDiffusionInstructPix2PixPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
