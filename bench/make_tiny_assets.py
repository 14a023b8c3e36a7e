"""Regenerate the tiny backend's tokenizer files under gpu_model/assets/tiny/.

BPE training is not deterministic across processes, so this runs once and its output is committed; the
backend only loads the files. Usage: `python bench/make_tiny_assets.py`. Prints one JSON object last.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizerFast, Qwen2TokenizerFast
from transformers.utils import logging as transformers_logging

from gpu_model.tiny_tokenizers import (
    CHAT_TEMPLATE,
    CLIP_DIR,
    CLIP_MAX_LENGTH,
    END_OF_TEXT,
    IM_END,
    QWEN_DIR,
    QWEN_SPECIAL_TOKENS,
)

VOCAB_SIZE = 1024

#: Caption-, prompt- and instruction-like text, so that common words become single tokens.
CORPUS = [
    "Describe this image in detail.",
    "Describe the image by detailing the color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects:",
    "Generate an image.",
    "A photo of a cat sitting on a red sofa next to a window.",
    "An astronaut in a white space suit holding a flag in front of the stars.",
    "A cup of coffee with latte art on a wooden table, seen from above.",
    "A painting of a dog running in the snow under a grey sky.",
    "A small house near a blue lake at sunset, with mountains in the background.",
    "A close-up portrait of a woman smiling, soft light, shallow depth of field.",
    "A city street at night with cars, neon signs and people walking in the rain.",
    "A bowl of fresh fruit: apples, oranges, bananas and grapes on a kitchen counter.",
    "Two children playing football on a green field on a sunny afternoon.",
    "A black and white photograph of an old bridge over a river.",
    "A product shot of a leather shoe on a plain white background.",
    "The image shows a tabby cat with green eyes looking at the camera.",
    "There are three birds on a branch and a tree with yellow leaves.",
    "Make the sky purple and add a rainbow.",
    "Replace the background with a beach and palm trees.",
    "Remove the person on the left and turn the photo into a watercolor painting.",
    "Change the color of the car to blue and add snow on the road.",
    "Add a hat to the dog and make it look like a cartoon.",
    "Make it brighter, increase the contrast and sharpen the details.",
    "A red apple, a green bottle and a blue book stacked on a shelf.",
    "An aerial view of a forest, a winding road and a village with white houses.",
    "A robot reading a newspaper in a cafe, digital art, highly detailed.",
    "The text on the sign says OPEN 24 HOURS in large letters.",
    "Numbers 0 1 2 3 4 5 6 7 8 9, prices like $12.50 and dates like 2024-06-01.",
]


def _qwen_backend() -> Tokenizer:
    """Byte-level BPE set up as transformers' Qwen2 converter sets it up."""
    backend = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix=""))
    backend.normalizer = normalizers.NFC()
    split = Regex(
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
        r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(split, behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _clip_backend() -> Tokenizer:
    """BPE with an end-of-word suffix, set up as transformers' CLIP converter sets it up."""
    backend = Tokenizer(
        models.BPE(end_of_word_suffix="</w>", unk_token=END_OF_TEXT, continuing_subword_prefix="")
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    split = Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(split, behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return backend


def _train_vocab_files(
    backend: Tokenizer, specials: list[str], tokenizer_class: str, end_of_word_suffix: str | None = None
) -> Path:
    """Train `backend` and write the files a real checkpoint ships (vocab.json, merges.txt) to a temp dir."""
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        **({"end_of_word_suffix": end_of_word_suffix} if end_of_word_suffix else {}),
    )
    backend.train_from_iterator(CORPUS, trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    folder = Path(tempfile.mkdtemp(prefix="tiny-vocab-"))
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # 4.51.3 guesses the class from the folder name without this file.
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    return folder


def make_qwen_tokenizer() -> Qwen2TokenizerFast:
    """Train the caption tokenizer and attach its special tokens and chat template."""
    folder = _train_vocab_files(_qwen_backend(), QWEN_SPECIAL_TOKENS, "Qwen2Tokenizer")
    tokenizer = Qwen2TokenizerFast.from_pretrained(
        folder,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        model_max_length=32768,
        local_files_only=True,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_clip_tokenizer() -> CLIPTokenizerFast:
    """Train the text-encoder tokenizer (converted from the slow class, as a real checkpoint is)."""
    folder = _train_vocab_files(
        _clip_backend(), ["<|startoftext|>", END_OF_TEXT], "CLIPTokenizer", end_of_word_suffix="</w>"
    )
    return CLIPTokenizerFast.from_pretrained(folder, model_max_length=CLIP_MAX_LENGTH, local_files_only=True)


def main() -> None:
    """Write both tokenizers and print a summary."""
    transformers_logging.set_verbosity_error()  # the slow CLIP tokenizer's note about ftfy is irrelevant
    summary: dict[str, object] = {}
    for name, tokenizer, folder in [
        ("qwen3", make_qwen_tokenizer(), QWEN_DIR),
        ("clip", make_clip_tokenizer(), CLIP_DIR),
    ]:
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(folder)
        summary[name] = {"dir": str(folder), "vocab": len(tokenizer), "files": sorted(os.listdir(folder))}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
