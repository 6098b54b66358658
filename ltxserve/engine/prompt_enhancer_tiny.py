"""Tiny random-weight prompt-enhancer models with the real architectures, saved in the published layouts.

`--model tiny` expands prompts with these: a `Florence2ForConditionalGeneration` (a two-stage DaViT and a one-layer
BART) and a `LlamaForCausalLM` of two layers, seeded, with tokenizers trained here (byte-level BPE with the `tokenizers`
library on a small built-in corpus: no download). The Llama tokenizer carries Llama 3's special tokens and a chat
template in Llama 3's format; the Florence tokenizer is BART-style. Both are written in the layouts their published
repositories use and loaded through the same loaders as the real weights. Random weights write gibberish: the point
is the plumbing (and determinism), not the words.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

CAPTIONER_DIR = "captioner"  # inside a prompt-enhancer folder: the Florence-2 files
LLM_DIR = "llm"  # the Llama files
TINY_IMAGE_SIZE = 32  # pixels a side; two DaViT stages (strides 4, 2) give 4x4 patches + 1 pooled token
TINY_LAYOUT_VERSION = "2"  # bump when the tiny models change, so that cached folders are rebuilt

_CORPUS = [
    "A woman walks along a beach at sunset while waves roll onto the sand.",
    "The camera slowly pans across a mountain valley covered in morning fog.",
    "A red car drives through a rainy city street at night, neon lights reflecting on the wet road.",
    "A cat jumps from a wooden table onto the floor and runs out of the room.",
    "The image shows a man in a blue jacket standing in front of a brick wall with a bicycle.",
    "Close-up of hands kneading dough on a floured kitchen counter in warm light.",
    "Birds fly over a calm lake surrounded by tall green trees under a cloudy sky.",
    "A child laughs and spins around in a field of yellow flowers as the wind blows.",
]

LLAMA_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"]
# Llama 3's chat format: a header per turn, the content, <|eot_id|>; the generation prompt opens the assistant turn.
LLAMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _train_bpe(vocab_size: int, special: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def tiny_llama_tokenizer():
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(400, LLAMA_SPECIAL_TOKENS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", chat_template=LLAMA_CHAT_TEMPLATE,
                                   model_max_length=131072)


def tiny_bart_tokenizer():
    from tokenizers import processors
    from transformers import BartTokenizerFast

    tok = _train_bpe(300, ["<s>", "<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    tok.add_special_tokens(["<mask>"])
    return BartTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                             cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                             model_max_length=1024)


def build_tiny_llm(folder: Path, seed: int = 0) -> None:
    """A two-layer LlamaForCausalLM with Llama 3.2's shape features (GQA, tied embeddings, llama3 rope scaling)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_llama_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
        bos_token_id=ids("<|begin_of_text|>"),
        eos_token_id=[ids("<|end_of_text|>"), ids("<|eom_id|>"), ids("<|eot_id|>")],
        pad_token_id=ids("<|finetune_right_pad_id|>"))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger than the default init, so that greedy decoding wanders rather than repeats
        g = torch.Generator().manual_seed(seed)
        for _, p in sorted(model.named_parameters()):
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               do_sample=True, temperature=0.6, top_p=0.9)  # as published
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # as published: the chat template inside tokenizer_config.json (transformers 5 writes it to its own file)
    template = folder / "chat_template.jinja"
    if template.exists():
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["chat_template"] = template.read_text()
        config_path.write_text(json.dumps(config, indent=2))
        template.unlink()


def build_tiny_captioner(folder: Path, seed: int = 0) -> None:
    from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration, Florence2VisionConfig

    from ltxserve.engine.florence_caption import save_published_captioner

    tokenizer = tiny_bart_tokenizer()
    vocab = len(tokenizer)
    vision = Florence2VisionConfig(
        depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True],
        embed_dim=[16, 32], num_heads=[1, 2], num_groups=[1, 2], window_size=2, projection_dim=32,
        max_temporal_embeddings=8, max_position_embeddings=8, drop_path_rate=0.0)
    text = BartConfig(vocab_size=vocab + 1, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1100,
                      bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0,
                      forced_eos_token_id=2, no_repeat_ngram_size=3, scale_embedding=False)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(Florence2Config(vision_config=vision, text_config=text,
                                                              image_token_id=vocab))
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for _, p in sorted(model.named_parameters()):
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    save_published_captioner(model, tokenizer, {
        "do_resize": True, "size": size, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "do_center_crop": False, "crop_size": size, "image_seq_length": (TINY_IMAGE_SIZE // 8) ** 2 + 1,
    }, folder)


def ensure_tiny_prompt_enhancer(cache_dir: Path, seed: int = 0) -> Path:
    """The tiny prompt-enhancer folder under `cache_dir`, built once (atomically: several workers may race)."""
    target = Path(cache_dir) / f"tiny-prompt-enhancer-v{TINY_LAYOUT_VERSION}-seed{seed}"
    if (target / "complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-prompt-enhancer-", dir=target.parent))
    try:
        build_tiny_captioner(staging / CAPTIONER_DIR, seed)
        build_tiny_llm(staging / LLM_DIR, seed)
        (staging / "complete").write_text("ok\n")
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first
            if not (target / "complete").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
