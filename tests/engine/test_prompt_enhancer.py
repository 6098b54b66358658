"""The prompt enhancer on tiny models: messages, decoding, the published-layout loader, placement beside the 13B."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from ltxserve.engine.florence_caption import (CaptionerError, load_captioner, native_key, published_key,
                                              save_published_captioner)
from ltxserve.engine.prompt_enhancer import (EnhancerUnavailable, PromptEnhancer, check_enhancer_folder,
                                             chat_messages, decode_new_tokens)
from ltxserve.engine.prompt_enhancer_tiny import CAPTIONER_DIR, LLM_DIR, ensure_tiny_prompt_enhancer


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return ensure_tiny_prompt_enhancer(tmp_path_factory.mktemp("pe-cache"))


@pytest.fixture(scope="module")
def enhancer(tiny_folder):
    e = PromptEnhancer(tiny_folder, caption_tokens=8, max_tokens=12)
    e.load()
    return e


IMAGE = Image.new("RGB", (64, 48), (200, 30, 30))


def test_chat_messages_hold_the_prompt_and_the_caption():
    messages = chat_messages("  a dog runs ", "A brown dog on a lawn.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "150 words" in messages[0]["content"] and "motion" in messages[0]["content"]
    user = messages[1]["content"]
    assert "a dog runs" in user and "A brown dog on a lawn." in user


def test_the_rendered_conversation_reaches_the_model(enhancer):
    ids = enhancer.tokenizer.apply_chat_template(chat_messages("a dog runs", "A lawn."), add_generation_prompt=True,
                                                 return_dict=True)["input_ids"]
    text = enhancer.tokenizer.decode(ids)
    assert text.count("<|begin_of_text|>") == 1  # the template's own BOS only (the reference doubles it)
    assert "a dog runs" in text and "A lawn." in text and text.endswith("assistant<|end_header_id|>\n\n")


def test_only_new_tokens_are_decoded(enhancer):
    tok = enhancer.tokenizer
    prompt = tok("the prompt text", return_tensors="pt")["input_ids"]
    new = tok("fresh words", add_special_tokens=False, return_tensors="pt")["input_ids"]
    eot = torch.tensor([[tok.convert_tokens_to_ids("<|eot_id|>")]])
    generated = torch.cat([prompt, new, eot], dim=1)
    assert decode_new_tokens(tok, generated, prompt.shape[1]) == "fresh words"


def test_expansion_is_deterministic_and_differs_from_the_prompt(enhancer, tiny_folder):
    first = enhancer.expand("a red ball rolls", IMAGE)
    assert first.caption and first.rewritten and first.prompt == first.rewritten != "a red ball rolls"
    again = PromptEnhancer(tiny_folder, caption_tokens=8, max_tokens=12).expand("a red ball rolls", IMAGE)
    assert again == first  # a fresh load of the same files gives the same caption and expansion
    other = enhancer.expand("a red ball rolls", Image.new("RGB", (64, 48), (10, 200, 30)))
    assert other.caption != first.caption  # the caption depends on the image


def test_new_token_limits_are_honoured(enhancer, monkeypatch):
    lengths = {}

    def spy(name, model):
        original = model.generate

        def generate(*args, **kwargs):
            out = original(*args, **kwargs)
            prompt = 0 if name == "caption" else kwargs["input_ids"].shape[1]  # BART returns decoder tokens only
            lengths[name] = (kwargs["max_new_tokens"], out.shape[1] - prompt)
            return out

        monkeypatch.setattr(model, "generate", generate)

    spy("caption", enhancer.captioner.model)
    spy("rewrite", enhancer.llm)
    enhancer.expand("a red ball rolls", IMAGE)
    assert lengths["rewrite"][0] == 12 and 0 < lengths["rewrite"][1] <= 12
    # the encoder-decoder's output: the decoder's start token, then at most the limit
    assert lengths["caption"][0] == 8 and 1 < lengths["caption"][1] <= 8 + 1


def test_published_layout_round_trips_the_captioner(tiny_folder, tmp_path):
    """Loaded from the published (remote-code) layout, saved back, loaded again: identical logits; and the file
    really is in the published names."""
    captioner = load_captioner(tiny_folder / CAPTIONER_DIR)
    from safetensors import safe_open

    with safe_open(tiny_folder / CAPTIONER_DIR / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "image_projection" in keys and "language_model.final_logits_bias" in keys
    assert any(k.startswith("vision_tower.blocks.0.0.spatial_block.conv1.fn.dw.") for k in keys)
    assert not any(k.startswith("model.") for k in keys)
    config = json.loads((tiny_folder / CAPTIONER_DIR / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "davit" and "dim_embed" in config["vision_config"]

    save_published_captioner(captioner.model, _without_image_token(tiny_folder), json.loads(
        (tiny_folder / CAPTIONER_DIR / "preprocessor_config.json").read_text()), tmp_path)
    again = load_captioner(tmp_path)
    inputs = captioner.processor(text="<DETAILED_CAPTION>", images=IMAGE, return_tensors="pt")
    with torch.no_grad():
        a = captioner.model(**inputs, decoder_input_ids=torch.tensor([[2, 0, 5]])).logits
        b = again.model(**inputs, decoder_input_ids=torch.tensor([[2, 0, 5]])).logits
    assert torch.equal(a, b)
    assert captioner.model.model.language_model.shared.weight[-1].abs().sum() == 0  # the <image> row


def _without_image_token(folder):
    from transformers import BartTokenizerFast

    return BartTokenizerFast.from_pretrained(folder / CAPTIONER_DIR)


def test_llm_round_trips_through_its_published_layout(enhancer, tmp_path):
    from transformers import LlamaForCausalLM

    enhancer.llm.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    ids = torch.tensor([[1, 5, 9, 30]])
    with torch.no_grad():
        assert torch.equal(enhancer.llm(ids).logits, again(ids).logits)


def test_key_translation_is_an_inverse_pair():
    for native in ("model.vision_tower.convs.2.conv.weight", "model.vision_tower.blocks.2.7.channel_block.ffn.fc1.bias",
                   "model.vision_tower.blocks.0.0.spatial_block.norm1.weight",
                   "model.multi_modal_projector.image_position_embed.row_embeddings.weight",
                   "model.language_model.decoder.layers.3.encoder_attn.k_proj.weight", "lm_head.weight"):
        assert native_key(published_key(native)) == native
    # the names transformers' conversion script maps
    assert native_key("vision_tower.blocks.1.0.channel_block.channel_attn.fn.qkv.weight") == \
        "model.vision_tower.blocks.1.0.channel_block.channel_attn.qkv.weight"
    assert native_key("vision_tower.blocks.1.0.spatial_block.ffn.norm.bias") == \
        "model.vision_tower.blocks.1.0.spatial_block.norm2.bias"


def test_unknown_published_weights_are_refused(tiny_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_folder / CAPTIONER_DIR, tmp_path / "c")
    state = load_file(tmp_path / "c" / "model.safetensors")
    state["vision_tower.head.weight"] = torch.zeros(2, 2)
    save_file(state, tmp_path / "c" / "model.safetensors")
    with pytest.raises(CaptionerError, match="vision_tower.head.weight"):
        load_captioner(tmp_path / "c")


def test_missing_weights_say_how_to_get_them(tmp_path):
    (tmp_path / CAPTIONER_DIR).mkdir()
    with pytest.raises(EnhancerUnavailable, match="weights pull --component prompt_captioner --component prompt_llm"):
        check_enhancer_folder(tmp_path)


# --- placement beside the 13B model (pure: planned for given GPU sizes) ----------------------------------------------

@pytest.mark.parametrize("card_gb, memory, expected", [
    (141, "auto", "gpu"), (80, "auto", "gpu"),      # room beside the whole model: resident
    (48, "auto", "visit"),                          # LTX-Video #162's card: on the GPU only while it runs
    (40, "auto", "visit"), (24, "auto", "visit"),   # offload placements: beside what stays resident
    (24, "sequential", "visit"), (12, "auto", "visit"),
])
def test_enhancer_placement_for_card_sizes(card_gb, memory, expected):
    from ltxserve.engine.placement import RequestSize, card_free_bytes, count_model_sizes, plan_placement
    from ltxserve.engine.prompt_enhancer_plan import count_enhancer_sizes, plan_enhancer
    from ltxserve.engine.memory_plan import weight_bytes

    sizes, enhancer = count_model_sizes(), count_enhancer_sizes()
    placement = plan_placement(card_free_bytes(card_gb), sizes, RequestSize(), memory=memory)
    plan = plan_enhancer(placement, sizes, enhancer)
    assert plan.run == expected, plan.describe()
    # never at the 13B model's expense: resident only beside the model's whole planned peak; visiting only beside
    # what is resident when it runs
    if plan.run == "gpu":
        assert placement.peak_bytes + plan.weight_bytes <= placement.free_bytes
    resident = sum(weight_bytes(sizes, placement.dtype).of(c) for c in placement.resident)
    if plan.run == "visit":
        assert resident + plan.need_bytes <= placement.free_bytes


def test_enhancer_runs_on_the_cpu_when_nothing_is_left_over():
    from ltxserve.engine.memory_plan import GiB
    from ltxserve.engine.placement import Placement, count_model_sizes
    from ltxserve.engine.prompt_enhancer_plan import count_enhancer_sizes, plan_enhancer

    # every component resident (36 GiB in bf16) on a card with 44 GiB free: 8 GiB left, the enhancer needs ~9.4
    placement = Placement("gpu", "bf16", "full", peak_bytes=43 * GiB, free_bytes=44 * GiB)
    plan = plan_enhancer(placement, count_model_sizes(), count_enhancer_sizes())
    assert plan.run == "cpu" and "do not fit" in plan.describe()


def test_enhancer_sizes_are_the_real_models():
    from ltxserve.engine.prompt_enhancer_plan import count_enhancer_sizes

    sizes = count_enhancer_sizes()
    assert 3.20e9 < sizes.llm_params < 3.22e9  # Llama 3.2 3B: 3.21B parameters, tied embeddings
    assert 0.76e9 < sizes.captioner_params < 0.78e9  # Florence-2-large: 0.77B


def test_a_resident_enhancer_is_taken_off_what_requests_are_planned_with():
    from ltxserve.engine.placement import RequestSize, card_free_bytes, count_model_sizes, plan_placement
    from ltxserve.engine.prompt_enhancer_plan import count_enhancer_sizes, plan_enhancer
    from ltxserve.engine.prompt_expansion import PromptExpander

    sizes = count_model_sizes()
    for gb in (80, 48):
        placement = plan_placement(card_free_bytes(gb), sizes, RequestSize())
        plan = plan_enhancer(placement, sizes, count_enhancer_sizes())
        reserved = PromptExpander.reserve(placement, plan)
        taken = placement.free_bytes - reserved.free_bytes
        assert taken == (plan.weight_bytes if plan.run == "gpu" else 0)


def test_the_lock_puts_the_enhancer_files_where_the_loader_reads_them(tmp_path):
    from ltxserve.engine.prompt_expansion import PROMPT_ENHANCER_DIR
    from ltxserve.weights.lock import default_lock_path, load_lock

    lock = load_lock(default_lock_path())
    components = [lock.component("prompt_captioner"), lock.component("prompt_llm")]
    assert all(c.optional for c in components)  # ~8 GB, only for expand_prompt: never blocks serving
    with pytest.raises(EnhancerUnavailable):
        check_enhancer_folder(tmp_path / PROMPT_ENHANCER_DIR)
    for comp in components:
        for f in comp.files:
            (tmp_path / f.dest).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f.dest).write_bytes(b"")
    check_enhancer_folder(tmp_path / PROMPT_ENHANCER_DIR)  # every file the loader needs is pinned


# The published config.json's shape (remote-code Florence-2-large, as transformers 4.x wrote it: generic generation
# and label keys inside text_config), written down here from the published layout; the values are Florence-2-large's.
PUBLISHED_LARGE_CONFIG = {
    "architectures": ["Florence2ForConditionalGeneration"], "model_type": "florence2", "projection_dim": 1024,
    "vocab_size": 51289, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "ignore_index": -100,
    "torch_dtype": "float16", "transformers_version": "4.41.0.dev0", "is_encoder_decoder": True,
    "text_config": {
        "model_type": "florence2_language", "vocab_size": 51289, "activation_dropout": 0.1,
        "activation_function": "gelu", "add_bias_logits": False, "add_final_layer_norm": False,
        "attention_dropout": 0.1, "bos_token_id": 0, "classif_activation": "tanh", "classifier_dropout": 0.0,
        "d_model": 1024, "decoder_attention_heads": 16, "decoder_ffn_dim": 4096, "decoder_layerdrop": 0.0,
        "decoder_layers": 12, "decoder_start_token_id": 2, "dropout": 0.1, "early_stopping": True,
        "encoder_attention_heads": 16, "encoder_ffn_dim": 4096, "encoder_layerdrop": 0.0, "encoder_layers": 12,
        "eos_token_id": 2, "forced_eos_token_id": 2, "forced_bos_token_id": 0, "gradient_checkpointing": False,
        "init_std": 0.02, "is_encoder_decoder": True, "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},
        "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}, "max_position_embeddings": 1024,
        "no_repeat_ngram_size": 3, "normalize_before": False, "num_hidden_layers": 12, "pad_token_id": 1,
        "scale_embedding": False, "num_beams": 3},
    "vision_config": {
        "model_type": "davit", "drop_path_rate": 0.1, "patch_size": [7, 3, 3, 3], "patch_stride": [4, 2, 2, 2],
        "patch_padding": [3, 1, 1, 1], "patch_prenorm": [False, True, True, True], "enable_checkpoint": False,
        "dim_embed": [256, 512, 1024, 2048], "num_heads": [8, 16, 32, 64], "num_groups": [8, 16, 32, 64],
        "depths": [1, 1, 9, 1], "window_size": 12, "projection_dim": 1024,
        "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 100},
        "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 50},
        "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"]},
}


def test_the_published_large_config_translates_to_the_native_model():
    from transformers import Florence2ForConditionalGeneration

    from ltxserve.engine.florence_caption import generation_defaults, native_config

    config = native_config(PUBLISHED_LARGE_CONFIG, 51290, 51289)
    with torch.device("meta"):
        model = Florence2ForConditionalGeneration(config)
    assert 0.76e9 < sum(p.numel() for p in model.parameters()) < 0.78e9
    assert config.vision_config.embed_dim == [256, 512, 1024, 2048] and config.text_config.d_model == 1024
    assert config.image_token_id == 51289 and config.text_config.vocab_size == 51290
    # the remote-code model captioned with its text config's generation settings: carried over
    assert generation_defaults(PUBLISHED_LARGE_CONFIG) == {"no_repeat_ngram_size": 3, "early_stopping": True,
                                                           "forced_bos_token_id": 0, "forced_eos_token_id": 2,
                                                           "decoder_start_token_id": 2}
    # every native weight has a published name and back
    for name in model.state_dict():
        if name not in ("model.language_model.encoder.embed_tokens.weight",
                        "model.language_model.decoder.embed_tokens.weight",
                        "model.multi_modal_projector.image_projection.weight"):
            assert native_key(published_key(name)) == name, name


def test_a_file_without_the_cosine_table_loads_the_same(tiny_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_folder / CAPTIONER_DIR, tmp_path / "c")
    state = load_file(tmp_path / "c" / "model.safetensors")
    del state["visual_temporal_embed.pos_idx_to_embed"]
    save_file(state, tmp_path / "c" / "model.safetensors")
    a, b = load_captioner(tiny_folder / CAPTIONER_DIR), load_captioner(tmp_path / "c")
    table = "model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed"
    assert torch.equal(a.model.state_dict()[table], b.model.state_dict()[table])


# --- the endpoint's side: every placement's code on the CPU standing in for the GPU -----------------------------


class _Ctx:
    request_id = "t"

    def __init__(self, cancel_after: int | None = None):
        self.logs: list[str] = []
        self.calls = 0
        self.cancel_after = cancel_after

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append(message)

    def progress(self, step: int, total: int, stage: str) -> None:
        pass

    def cancelled(self) -> bool:
        self.calls += 1
        return self.cancel_after is not None and self.calls > self.cancel_after


class _Offloader:
    released = 0

    def release(self) -> None:
        self.released += 1


def _expander(tmp_path, run: str):
    from ltxserve.config import Settings
    from ltxserve.engine.prompt_enhancer_plan import EnhancerPlan
    from ltxserve.engine.prompt_expansion import PromptExpander

    settings = Settings(data_dir=tmp_path, prompt_enhancer_caption_tokens=6, prompt_enhancer_max_tokens=8)
    plan = EnhancerPlan(run, 1, 1, "stated")  # type: ignore[arg-type]
    return PromptExpander(settings, tiny=True, device=torch.device("cpu"), dtype=torch.float32, plan=plan)


def test_every_enhancer_placement_gives_the_same_expansion(tmp_path):
    results = {}
    for run in ("gpu", "visit", "cpu"):
        expander, ctx, offloader = _expander(tmp_path, run), _Ctx(), _Offloader()
        results[run] = expander.expand("a red ball rolls", IMAGE, ctx, offloader)
        assert any(m.startswith("prompt enhancer: image caption: ") for m in ctx.logs)
        assert f"prompt enhancer: expanded prompt: {results[run]}" in ctx.logs
        # visiting: the previous visitor goes home first, and the enhancer's tensors are its host copies again after
        assert offloader.released == (1 if run == "visit" else 0)
        if run == "visit":
            for copies in expander._copies:
                assert all(t.data.data_ptr() == host.data_ptr() for t, host in copies.tensors)
    assert results["gpu"] == results["visit"] == results["cpu"] != "a red ball rolls"


def test_the_enhancer_is_not_loaded_into_host_memory_that_is_not_there(tmp_path, monkeypatch):
    from ltxserve.engine import prompt_expansion
    from ltxserve.engine.contract import EndpointError

    expander = _expander(tmp_path, "cpu")
    folder = prompt_expansion.enhancer_folder(expander.settings, tiny=True)
    files = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    assert files > 0
    monkeypatch.setattr(prompt_expansion, "available_host_bytes",
                        lambda: files + prompt_expansion.HOST_MARGIN_BYTES - 1)
    with pytest.raises(EndpointError) as refused:
        expander.expand("a red ball rolls", IMAGE, _Ctx())
    assert refused.value.status_code == 503 and "host memory" in refused.value.message
    assert expander.enhancer is None or not expander.enhancer.loaded
    monkeypatch.setattr(prompt_expansion, "available_host_bytes",
                        lambda: files + prompt_expansion.HOST_MARGIN_BYTES)
    assert expander.expand("a red ball rolls", IMAGE, _Ctx()) != "a red ball rolls"


def test_the_available_host_memory_is_read_from_the_os():
    from ltxserve.engine.prompt_expansion import available_host_bytes

    available = available_host_bytes()
    assert available is not None and 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_a_cancel_stops_the_expansion(tmp_path):
    from ltxserve.engine.contract import JobCancelled

    expander = _expander(tmp_path, "cpu")
    ctx = _Ctx(cancel_after=2)
    with pytest.raises(JobCancelled):
        expander.expand("a red ball rolls", IMAGE, ctx)
    assert ctx.calls < 8  # stopped within a few tokens, not after both generations ran to their limits


def test_the_chat_date_is_fixed_so_expansions_do_not_change_with_the_day(enhancer, monkeypatch):
    from ltxserve.engine import prompt_enhancer

    # a template that, like Llama 3.2's published one, writes today's date unless given date_string
    template = ("{{ bos_token }}Today Date: {{ date_string if date_string is defined else strftime_now('%d %b %Y') }}"
                "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    monkeypatch.setattr(enhancer.tokenizer, "chat_template", template)
    seen = []
    original = enhancer.llm.generate

    def generate(*args, **kwargs):
        seen.append(enhancer.tokenizer.decode(kwargs["input_ids"][0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(enhancer.llm, "generate", generate)
    enhancer.rewrite("a dog", "a lawn", torch.device("cpu"))
    assert f"Today Date: {prompt_enhancer.CHAT_DATE}" in seen[0]


def test_the_enhancer_runs_in_bf16_as_a_gpu_or_the_cpu_fallback_runs_it(tiny_folder):
    e = PromptEnhancer(tiny_folder, dtype=torch.bfloat16, caption_tokens=6, max_tokens=8)
    first = e.expand("a red ball rolls", IMAGE)
    assert e.llm.dtype == torch.bfloat16 and next(e.captioner.model.parameters()).dtype == torch.bfloat16
    assert first.caption and first.rewritten and e.expand("a red ball rolls", IMAGE) == first
