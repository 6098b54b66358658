"""Florence-2 captions through transformers' own `Florence2ForConditionalGeneration`, from the published layout.

MiaoshouAI/Florence-2-large-PromptGen-v2.0 (like microsoft/Florence-2-*) is published for the remote-code model:
its config.json describes a `davit` vision tower and a `florence2_language` (BART) text model, and its weights use
the remote code's names (`vision_tower.convs.0.proj`, `...spatial_block.conv1.fn.dw`, `image_projection` as a bare
matrix, `language_model.model.*`). transformers' native class wants another config and other names, and an `<image>`
placeholder token the published tokenizer does not have. Nothing here runs remote code: `load_captioner` reads the
published files and translates them:

- config: `dim_embed` -> `embed_dim`, `image_pos_embed.max_pos_embeddings` -> `max_position_embeddings`,
  `visual_temporal_embedding.max_temporal_embeddings` -> `max_temporal_embeddings`; the BART text config as is;
- weights: the renames transformers' own conversion script applies (convert_florence2_original_pytorch_to_hf.py),
  `image_projection` transposed into a Linear weight; every key must be used (only BART's all-zero
  `final_logits_bias`, which the native head has no place for, may be dropped);
- tokenizer: `<image>` added as a special token after the published vocabulary; the embedding gains one zero row
  for it (its positions are replaced by image features before the encoder runs) and generation never emits it.

`save_published_captioner` writes a native model back in the published layout, so tests load tiny models through
exactly this path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

IMAGE_TOKEN = "<image>"
CAPTION_TASK = "<DETAILED_CAPTION>"
CAPTION_BEAMS = 3  # as the reference captions (prompt_enhance_utils: num_beams=3, do_sample=False)
WEIGHTS_NAME = "model.safetensors"
# The remote-code model's own pooling, the only one the native projector implements.
IMAGE_FEATURE_SOURCE = ["spatial_avg_pool", "temporal_avg_pool"]
# Generation settings a published text_config may carry; the remote-code model generated with them.
_TEXT_GENERATION_KEYS = ("no_repeat_ngram_size", "early_stopping", "length_penalty", "forced_bos_token_id",
                         "forced_eos_token_id", "decoder_start_token_id")


class CaptionerError(Exception):
    """The folder is not a Florence-2 checkpoint in the published layout; the message says what does not match."""


# --- config ------------------------------------------------------------------------------------------------------


def native_config(published: dict, vocab_with_image_token: int, image_token_id: int):
    """The native Florence2Config for a published (remote-code) config.json."""
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    vision = published.get("vision_config") or {}
    text = dict(published.get("text_config") or {})
    if vision.get("model_type", "davit") != "davit" or "dim_embed" not in vision:
        raise CaptionerError("config.json: vision_config is not the published DaViT layout (no dim_embed)")
    source = vision.get("image_feature_source", IMAGE_FEATURE_SOURCE)
    if list(source) != IMAGE_FEATURE_SOURCE:
        raise CaptionerError(f"config.json: image_feature_source {source!r} is not supported "
                             f"(transformers' Florence-2 pools as {IMAGE_FEATURE_SOURCE})")
    vision_config = Florence2VisionConfig(
        depths=list(vision["depths"]), patch_size=list(vision["patch_size"]),
        patch_stride=list(vision["patch_stride"]), patch_padding=list(vision["patch_padding"]),
        patch_prenorm=list(vision["patch_prenorm"]), embed_dim=list(vision["dim_embed"]),
        num_heads=list(vision["num_heads"]), num_groups=list(vision["num_groups"]),
        window_size=vision.get("window_size", 12), drop_path_rate=0.0,
        projection_dim=vision.get("projection_dim", published.get("projection_dim")),
        max_temporal_embeddings=(vision.get("visual_temporal_embedding") or {}).get("max_temporal_embeddings", 100),
        max_position_embeddings=(vision.get("image_pos_embed") or {}).get("max_pos_embeddings", 50),
    )
    bart_keys = set(BartConfig().to_dict())
    skipped = ("model_type", "architectures", "transformers_version", "_name_or_path")
    text_kwargs = {k: v for k, v in text.items() if k in bart_keys and k not in skipped}
    text_kwargs["vocab_size"] = vocab_with_image_token
    text_config = BartConfig(**text_kwargs)
    return Florence2Config(vision_config=vision_config, text_config=text_config, image_token_id=image_token_id)


def generation_defaults(published: dict) -> dict:
    text = published.get("text_config") or {}
    return {k: text[k] for k in _TEXT_GENERATION_KEYS if text.get(k) is not None}


# --- weights -----------------------------------------------------------------------------------------------------

# (published pattern, native replacement), applied to the first that matches; names after the mapping of
# transformers' conversion script for the remote-code Florence-2 checkpoints.
_VISION_RENAMES = (
    (r"^vision_tower\.convs\.(\d+)\.proj\.", r"model.vision_tower.convs.\1.conv."),
    (r"^vision_tower\.convs\.(\d+)\.norm\.", r"model.vision_tower.convs.\1.norm."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.conv([12])\.fn\.dw\.",
     r"model.vision_tower.blocks.\1.\2.\3_block.conv\4."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.spatial_block\.window_attn\.norm\.",
     r"model.vision_tower.blocks.\1.\2.spatial_block.norm1."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.spatial_block\.window_attn\.fn\.",
     r"model.vision_tower.blocks.\1.\2.spatial_block.window_attn."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.channel_block\.channel_attn\.norm\.",
     r"model.vision_tower.blocks.\1.\2.channel_block.norm1."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.channel_block\.channel_attn\.fn\.",
     r"model.vision_tower.blocks.\1.\2.channel_block.channel_attn."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.ffn\.norm\.",
     r"model.vision_tower.blocks.\1.\2.\3_block.norm2."),
    (r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.ffn\.fn\.net\.",
     r"model.vision_tower.blocks.\1.\2.\3_block.ffn."),
    (r"^image_proj_norm\.", "model.multi_modal_projector.image_proj_norm."),
    (r"^image_pos_embed\.", "model.multi_modal_projector.image_position_embed."),
    (r"^visual_temporal_embed\.", "model.multi_modal_projector.visual_temporal_embed."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
)
_RENAMES = tuple((re.compile(a), b) for a, b in _VISION_RENAMES)
_PROJECTION = "image_projection"
_FINAL_LOGITS_BIAS = "language_model.final_logits_bias"
_EMBEDDINGS = ("model.language_model.shared.weight", "model.language_model.encoder.embed_tokens.weight",
               "model.language_model.decoder.embed_tokens.weight", "lm_head.weight")


def native_key(published_key: str) -> str | None:
    for pattern, replacement in _RENAMES:
        if pattern.match(published_key):
            return pattern.sub(replacement, published_key, count=1)
    return None


def published_key(native: str) -> str | None:
    """The inverse rename (for writing the published layout)."""
    inverse = (
        (r"^model\.vision_tower\.convs\.(\d+)\.conv\.", r"vision_tower.convs.\1.proj."),
        (r"^model\.vision_tower\.convs\.(\d+)\.norm\.", r"vision_tower.convs.\1.norm."),
        (r"^model\.vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.conv([12])\.",
         r"vision_tower.blocks.\1.\2.\3_block.conv\4.fn.dw."),
        (r"^model\.vision_tower\.blocks\.(\d+)\.(\d+)\.spatial_block\.norm1\.",
         r"vision_tower.blocks.\1.\2.spatial_block.window_attn.norm."),
        (r"^model\.vision_tower\.blocks\.(\d+)\.(\d+)\.spatial_block\.window_attn\.",
         r"vision_tower.blocks.\1.\2.spatial_block.window_attn.fn."),
        (r"^model\.vision_tower\.blocks\.(\d+)\.(\d+)\.channel_block\.norm1\.",
         r"vision_tower.blocks.\1.\2.channel_block.channel_attn.norm."),
        (r"^model\.vision_tower\.blocks\.(\d+)\.(\d+)\.channel_block\.channel_attn\.",
         r"vision_tower.blocks.\1.\2.channel_block.channel_attn.fn."),
        (r"^model\.vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.norm2\.",
         r"vision_tower.blocks.\1.\2.\3_block.ffn.norm."),
        (r"^model\.vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.ffn\.",
         r"vision_tower.blocks.\1.\2.\3_block.ffn.fn.net."),
        (r"^model\.multi_modal_projector\.image_proj_norm\.", "image_proj_norm."),
        (r"^model\.multi_modal_projector\.image_position_embed\.", "image_pos_embed."),
        (r"^model\.multi_modal_projector\.visual_temporal_embed\.", "visual_temporal_embed."),
        (r"^model\.language_model\.", "language_model.model."),
        (r"^lm_head\.", "language_model.lm_head."),
    )
    for a, b in inverse:
        if re.match(a, native):
            return re.sub(a, b, native, count=1)
    return None


def native_state_dict(published: dict[str, torch.Tensor], vocab: int) -> dict[str, torch.Tensor]:
    """The published tensors under native names, with one zero embedding row appended for `<image>`."""
    state: dict[str, torch.Tensor] = {}
    unused = []
    for key, tensor in published.items():
        if key == _PROJECTION:
            state["model.multi_modal_projector.image_projection.weight"] = tensor.t().contiguous()
        elif key == _FINAL_LOGITS_BIAS:
            if torch.count_nonzero(tensor):
                raise CaptionerError(f"{key} is not zero: the native Florence-2 head has no bias to hold it")
        else:
            name = native_key(key)
            if name is None:
                unused.append(key)
            else:
                state[name] = tensor
    if unused:
        raise CaptionerError(f"{len(unused)} published weights have no place in transformers' Florence-2: "
                             f"{sorted(unused)[:8]}")
    # BART ties the shared embedding, both embed_tokens and the head: a file may hold any of them.
    embedding = next((state.pop(k) for k in _EMBEDDINGS if k in state), None)
    for k in _EMBEDDINGS:
        state.pop(k, None)
    if embedding is None:
        raise CaptionerError("no token embedding (language_model.model.shared.weight) in the checkpoint")
    if embedding.shape[0] != vocab:
        raise CaptionerError(f"the token embedding has {embedding.shape[0]} rows, the tokenizer {vocab} tokens")
    state["model.language_model.shared.weight"] = torch.cat([embedding, embedding.new_zeros(1, embedding.shape[1])])
    return state


_TEMPORAL_TABLE = "model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed"


def _cosine_table(positions: int, dim: int) -> torch.Tensor:
    from transformers.models.florence2.modeling_florence2 import Florence2VisionPositionalEmbeddingCosine1D

    sine, cosine = Florence2VisionPositionalEmbeddingCosine1D.get_sinusoid_embeddings(positions, dim)
    table = torch.empty(positions, dim)
    table[:, 0::2], table[:, 1::2] = sine, cosine
    return table


# --- loading -----------------------------------------------------------------------------------------------------


@dataclass
class Captioner:
    model: torch.nn.Module  # Florence2ForConditionalGeneration
    processor: object  # Florence2Processor
    generation: dict  # the published text config's generation settings (no_repeat_ngram_size, ...)

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    @torch.inference_mode()
    def caption(self, image, max_new_tokens: int, device: torch.device | None = None, stopping=None) -> str:
        """Florence-2's detailed caption of a PIL image: beam search, no sampling (deterministic)."""
        device = device or next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        inputs = self.processor(text=CAPTION_TASK, images=image.convert("RGB"), return_tensors="pt")
        generated = self.model.generate(
            input_ids=inputs["input_ids"].to(device), pixel_values=inputs["pixel_values"].to(device, dtype),
            attention_mask=inputs["attention_mask"].to(device), max_new_tokens=max_new_tokens, do_sample=False,
            num_beams=CAPTION_BEAMS, suppress_tokens=[self.image_token_id], stopping_criteria=stopping,
            **self.generation)
        return self.processor.tokenizer.decode(generated[0], skip_special_tokens=True).strip()


def _read_published_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CaptionerError(f"{folder}: no .safetensors weights (the published {WEIGHTS_NAME})")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


def load_processor(folder: Path):
    """The published BART tokenizer (plus `<image>`) and CLIP-style image processor, as a Florence2Processor."""
    from transformers import AddedToken, BartTokenizerFast, CLIPImageProcessorPil, Florence2Processor

    if not (folder / "tokenizer.json").exists() or not (folder / "preprocessor_config.json").exists():
        raise CaptionerError(f"{folder}: missing tokenizer.json or preprocessor_config.json")
    tokenizer = BartTokenizerFast.from_pretrained(folder, local_files_only=True)
    published_vocab = len(tokenizer)
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    tokenizer.image_token = IMAGE_TOKEN
    tokenizer.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    image_seq_length = pre.get("image_seq_length")
    if not image_seq_length:
        raise CaptionerError(f"{folder}/preprocessor_config.json: no image_seq_length")
    wanted = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
              "image_std", "do_center_crop", "crop_size", "do_convert_rgb")
    # the PIL implementation: no torchvision needed, the same pixels on every machine
    image_processor = CLIPImageProcessorPil(**{k: v for k, v in pre.items() if k in wanted and v is not None})
    image_processor.image_seq_length = image_seq_length
    return Florence2Processor(image_processor=image_processor, tokenizer=tokenizer), published_vocab


def load_captioner(folder: Path | str, dtype: torch.dtype = torch.float32) -> Captioner:
    """Florence-2 from a folder in the published (remote-code) layout, as transformers' native class, on the CPU."""
    from transformers import Florence2ForConditionalGeneration

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise CaptionerError(f"{folder}: no config.json")
    published = json.loads((folder / "config.json").read_text())
    processor, vocab = load_processor(folder)
    image_token_id = processor.tokenizer.image_token_id
    if image_token_id != vocab:
        raise CaptionerError(f"{IMAGE_TOKEN} got id {image_token_id}, expected {vocab} (after the vocabulary)")
    config = native_config(published, vocab + 1, image_token_id)
    state = native_state_dict(_read_published_weights(folder), vocab)
    with torch.device("meta"):
        model = Florence2ForConditionalGeneration(config)
    if _TEMPORAL_TABLE not in state:  # a fixed cosine table: made here when a file does not hold it
        state[_TEMPORAL_TABLE] = _cosine_table(config.vision_config.max_temporal_embeddings,
                                               config.vision_config.embed_dim[-1])
    buffers = {n for n, _ in model.named_buffers()}
    expected = set(model.state_dict()) - {"lm_head.weight", *_EMBEDDINGS[1:3]}
    missing = sorted(expected - set(state) - buffers)
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise CaptionerError(f"{folder}: weights do not match config.json (missing {missing[:8]}; "
                             f"unexpected {unexpected[:8]})")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise CaptionerError(f"{folder}: {name} was not loaded")
    model.to(dtype).eval().requires_grad_(False)
    return Captioner(model=model, processor=processor, generation=generation_defaults(published))


# --- writing the published layout (tiny models, tests) ----------------------------------------------------------


def published_config(model) -> dict:
    """The remote-code config.json describing a native model (its vocabulary without `<image>`)."""
    v, t = model.config.vision_config, model.config.text_config
    text = {k: val for k, val in t.to_dict().items() if k not in ("architectures", "transformers_version", "dtype",
                                                                   "torch_dtype")}
    text.update(model_type="florence2_language", vocab_size=t.vocab_size - 1)
    return {
        "architectures": ["Florence2ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config",
                     "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"},
        "model_type": "florence2", "projection_dim": v.projection_dim, "vocab_size": t.vocab_size - 1,
        "torch_dtype": "float32",
        "text_config": text,
        "vision_config": {
            "model_type": "davit", "dim_embed": list(v.embed_dim), "depths": list(v.depths),
            "num_heads": list(v.num_heads), "num_groups": list(v.num_groups), "patch_size": list(v.patch_size),
            "patch_stride": list(v.patch_stride), "patch_padding": list(v.patch_padding),
            "patch_prenorm": list(v.patch_prenorm), "window_size": v.window_size, "drop_path_rate": 0.1,
            "projection_dim": v.projection_dim, "enable_checkpoint": False,
            "image_feature_source": IMAGE_FEATURE_SOURCE,
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": v.max_position_embeddings},
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": v.max_temporal_embeddings},
        },
    }


def save_published_captioner(model, tokenizer, image_processor_config: dict, folder: Path | str) -> None:
    """Write a native Florence-2 (whose last vocabulary row is `<image>`) and a BART tokenizer without `<image>` in
    the published layout: config.json, model.safetensors (remote-code names), tokenizer files and
    preprocessor_config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name in _EMBEDDINGS[1:]:
            continue  # tied to the shared embedding, as the published file dedupes them
        if name == "model.multi_modal_projector.image_projection.weight":
            tensors[_PROJECTION] = tensor.t().contiguous()
            continue
        if name == "model.language_model.shared.weight":
            tensor = tensor[:-1]  # without the `<image>` row
        key = published_key(name)
        if key is None:
            raise CaptionerError(f"no published name for {name}")
        tensors[key] = tensor.detach().contiguous().cpu()
    tensors[_FINAL_LOGITS_BIAS] = torch.zeros(1, model.config.text_config.vocab_size - 1)
    save_file(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(published_config(model), indent=2))
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"processor_class": "Florence2Processor", "image_processor_type": "CLIPImageProcessor",
         **image_processor_config}, indent=2))
