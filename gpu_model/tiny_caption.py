"""A tiny Ovis-shaped captioner with random weights: vision tower -> visual vocabulary -> Qwen3 embeddings.

Ovis's understanding path, built from stock transformers parts: a SigLIP vision tower, a head that gives each
patch a softmax over a visual vocabulary, a visual embedding table that turns those probabilities into LLM
embeddings, and a Qwen3 decoder that receives them at the image placeholder positions of a chat prompt.
"""

from __future__ import annotations

import torch
from torch import nn

# Imported from their modules: the package root's lazy exports look like dummy objects to mypy.
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM
from transformers.models.siglip.configuration_siglip import SiglipVisionConfig
from transformers.models.siglip.image_processing_siglip import SiglipImageProcessor
from transformers.models.siglip.modeling_siglip import SiglipVisionModel
from transformers.tokenization_utils_fast import PreTrainedTokenizerFast

from gpu_model.requests import CaptionRequest
from gpu_model.tiny_tokenizers import (
    IM_END,
    IMAGE_PAD,
    QWEN_SPECIAL_TOKENS,
    VISION_END,
    VISION_START,
)

IMAGE_SIZE = 64
PATCH_SIZE = 16
#: One visual token per patch: (64 / 16) ** 2.
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
VISUAL_VOCAB = 128
LLM_HIDDEN = 64


class _SeededSampling(LogitsProcessor):
    """Sample rows with temperature > 0 from their own generator; greedy rows pass through.

    The sampled token is made the only finite logit, so one greedy `generate` call serves a batch that mixes
    greedy and sampled rows, and a row's draws never depend on its neighbours.
    """

    def __init__(self, temperatures: list[float], seeds: list[int]) -> None:
        self.temperatures = temperatures
        # CPU generators: the same seed samples the same tokens on any device.
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, (temperature, generator) in enumerate(zip(self.temperatures, self.generators, strict=True)):
            if temperature > 0:
                probs = torch.softmax(scores[row].float().cpu() / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
                scores[row] = -torch.inf
                scores[row, token] = 0.0
        return scores


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(token_id, int)
    return token_id


def _unprintable_token_ids(tokenizer: PreTrainedTokenizerFast, keep: int) -> list[int]:
    """Control tokens (but `keep`) and tokens that decode to stray bytes or control characters.

    Random weights pick tokens at random; suppressing these keeps the noise captions printable text.
    """
    special = set(tokenizer.all_special_ids)
    suppressed = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id != keep and (token_id in special or not text.isprintable() or "\ufffd" in text):
            suppressed.append(token_id)
    return suppressed


class TinyOvisCaptioner(nn.Module):
    """SigLIP + probabilistic visual tokens + Qwen3, captioning a left-padded batch in one `generate`."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.image_pad_id = _token_id(tokenizer, IMAGE_PAD)
        self.eos_id = _token_id(tokenizer, IM_END)
        self.image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        vision_config = SiglipVisionConfig(
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
        self.vision_tower = SiglipVisionModel(vision_config)
        # Ovis: linear head + layer norm, then a softmax over the visual vocabulary.
        self.visual_head = nn.Sequential(
            nn.Linear(vision_config.hidden_size, VISUAL_VOCAB, bias=False), nn.LayerNorm(VISUAL_VOCAB)
        )
        self.visual_embeddings = nn.Embedding(VISUAL_VOCAB, LLM_HIDDEN)
        self.llm = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=LLM_HIDDEN,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                max_position_embeddings=4096,
                sliding_window=None,  # the default warns that sliding windows are not implemented
                # Untied: with tied random embeddings the head echoes the last input token forever.
                tie_word_embeddings=False,
                bos_token_id=None,
                eos_token_id=self.eos_id,
                pad_token_id=tokenizer.pad_token_id,
                attn_implementation="sdpa",
            )
        )
        self.llm.generation_config.eos_token_id = self.eos_id
        self.llm.generation_config.pad_token_id = tokenizer.pad_token_id
        self.suppressed_ids = _unprintable_token_ids(tokenizer, keep=self.eos_id)
        self.eval()

    def prompt_text(self, prompt: str) -> str:
        """The chat-formatted prompt with one placeholder per visual token."""
        for token in QWEN_SPECIAL_TOKENS:  # a prompt must not inject control or image tokens
            prompt = prompt.replace(token, "")
        content = f"{VISION_START}{IMAGE_PAD}{VISION_END}\n{prompt}"
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        assert isinstance(text, str)
        return text.replace(IMAGE_PAD, IMAGE_PAD * IMAGE_TOKENS)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the visual embeddings spliced in at the image placeholders."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        patches = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        visual = torch.softmax(self.visual_head(patches), dim=-1) @ self.visual_embeddings.weight
        mask = input_ids == self.image_pad_id
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), visual.to(embeds.dtype))
        return embeds

    @torch.inference_mode()
    def new_token_ids(self, requests: list[CaptionRequest]) -> list[list[int]]:
        """Generate for the whole batch in one `generate` call; each row is cut to its own limit."""
        device = self.llm.device
        encoded = self.tokenizer(
            [self.prompt_text(r.prompt) for r in requests], padding=True, return_tensors="pt"
        )
        input_ids = encoded.input_ids.to(device)
        pixel_values = self.image_processor(
            images=[r.image.convert("RGB") for r in requests], return_tensors="pt"
        ).pixel_values.to(device)
        sampling = _SeededSampling([r.temperature for r in requests], [r.seed for r in requests])
        # With inputs_embeds only, generate returns the new tokens alone.
        new_tokens = self.llm.generate(
            inputs_embeds=self.embed(input_ids, pixel_values),
            attention_mask=encoded.attention_mask.to(device),
            max_new_tokens=max(r.max_new_tokens for r in requests),
            do_sample=False,
            logits_processor=LogitsProcessorList([sampling]),
            suppress_tokens=self.suppressed_ids,
            eos_token_id=self.eos_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        assert isinstance(new_tokens, torch.Tensor)  # no dict output was asked for
        return [row[: r.max_new_tokens].tolist() for row, r in zip(new_tokens.cpu(), requests, strict=True)]

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        """Captions of the batch: the new tokens only, special tokens skipped."""
        texts = self.tokenizer.batch_decode(self.new_token_ids(requests), skip_special_tokens=True)
        return [text.strip() for text in texts]
