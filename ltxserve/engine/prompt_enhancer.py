"""`expand_prompt`: the reference's prompt enhancer for image-to-video, deterministic.

Florence-2 (MiaoshouAI/Florence-2-large-PromptGen-v2.0) captions the conditioning image with its detailed-caption
task (beam search, 3 beams); Llama 3.2 3B Instruct (unsloth/Llama-3.2-3B-Instruct) then rewrites the user's prompt,
with the caption as context, into one paragraph of about 150 words that leads with the motion. Both load through
transformers' own classes (florence_caption.py translates Florence's published layout); both generate without
sampling, so the same request gives the same expansion. Unlike the reference, the rewrite is greedy (the published
generation_config samples at temperature 0.6) and the chat template's tokens are used as they are (the reference
tokenizes the rendered template again, which adds a second <|begin_of_text|>).

The models load on first use (most requests never ask), into host memory; `run_on` says where they compute for
one expansion: on the GPU beside the other components, visiting the GPU for the expansion only, or on the CPU
(prompt_enhancer_plan.py decides which from the memory plan).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ltxserve.engine.florence_caption import Captioner, CaptionerError, load_captioner
from ltxserve.engine.prompt_enhancer_tiny import CAPTIONER_DIR, LLM_DIR

log = logging.getLogger("ltxserve.engine")

# Our own wording of the reference's brief (image-to-video): motion first, one paragraph, ~150 words, faithful to
# the first frame, nothing but the prompt.
SYSTEM_PROMPT = """You write prompts for a video model that animates a still image: the image is the first frame.
You are given the user's request and a caption of that image. Rewrite the request as one detailed paragraph of about 150 words, and never more than 200.
Open with the motion: what moves and how, in one plain sentence.
Then describe, in the order they happen, the gestures and movements; the look of the people, animals and objects; the setting and background; the camera's framing and movement; the light and colours; any change during the shot.
Stay true to the image: where the request contradicts the caption, follow the caption for what is visible and the request for what happens.
Keep the user's intent, write literally and concretely, in the present tense, without lists, headings or quotation marks.
Answer with the paragraph alone."""


# Llama 3.2's published chat template writes "Today Date: <today>" into the system turn unless given `date_string`:
# a fixed date keeps the expansion the same from one day to the next (this is the template's own fallback date).
CHAT_DATE = "26 Jul 2024"


class EnhancerUnavailable(Exception):
    """The enhancer's weights are not there (or do not load); the message says how to get them."""


def chat_messages(prompt: str, caption: str) -> list[dict[str, str]]:
    """The rewrite's conversation: the system prompt, then the user's prompt and the image's caption together."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Request: {prompt.strip()}\nFirst frame: {caption.strip()}"},
    ]


def decode_new_tokens(tokenizer, generated: torch.Tensor, prompt_length: int) -> str:
    """The text of the tokens generated after the prompt (never the prompt itself), special tokens dropped."""
    return tokenizer.decode(generated[0, prompt_length:], skip_special_tokens=True).strip()


def _stopping(should_stop):
    """A generation stopping criterion from a callback (None: none)."""
    if should_stop is None:
        return None
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


@dataclass
class Expansion:
    prompt: str  # what the video is generated from
    caption: str
    rewritten: str  # the LLM's answer ("" if it gave nothing usable)


def _missing_message(folder: Path, what: str) -> str:
    return (f"expand_prompt needs the prompt enhancer's weights ({what}), which are not in {folder}: run "
            "`ltxserve weights pull --component prompt_captioner --component prompt_llm` on the server (after "
            "`ltxserve weights pin prompt_captioner --latest` while weights.lock has no commit for it), or "
            "`ltxserve weights import DIR`")


def check_enhancer_folder(folder: Path) -> None:
    """Raise EnhancerUnavailable unless both models' files are there (cheap: no weights are read)."""
    for sub, what, needed in ((CAPTIONER_DIR, "Florence-2 captioner", ("config.json", "tokenizer.json")),
                              (LLM_DIR, "Llama 3.2 3B", ("config.json", "tokenizer.json", "tokenizer_config.json"))):
        if not all((folder / sub / name).exists() for name in needed) or not any((folder / sub).glob("*.safetensors")):
            raise EnhancerUnavailable(_missing_message(folder, what))


class PromptEnhancer:
    """Captioner + LLM, loaded on first use into host memory in `dtype`."""

    def __init__(self, folder: Path | str, *, dtype: torch.dtype = torch.float32, caption_tokens: int = 1024,
                 max_tokens: int = 256):
        self.folder = Path(folder)
        self.dtype = dtype
        self.caption_tokens = caption_tokens
        self.max_tokens = max_tokens
        self.captioner: Captioner | None = None
        self.llm = None
        self.tokenizer = None
        self.eos_token_ids: list[int] = []
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.llm is not None

    def modules(self) -> list[torch.nn.Module]:
        self.load()
        return [self.captioner.model, self.llm]  # type: ignore[union-attr]

    def load(self) -> None:
        with self._lock:
            if self.loaded:
                return
            check_enhancer_folder(self.folder)
            from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

            try:
                captioner = load_captioner(self.folder / CAPTIONER_DIR, self.dtype)
                llm_dir = self.folder / LLM_DIR
                llm = LlamaForCausalLM.from_pretrained(llm_dir, dtype=self.dtype, local_files_only=True)
                tokenizer = AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
            except (CaptionerError, OSError, ValueError) as exc:
                raise EnhancerUnavailable(f"the prompt enhancer in {self.folder} does not load: {exc}") from exc
            if not getattr(tokenizer, "chat_template", None):
                raise EnhancerUnavailable(f"{llm_dir}: the tokenizer has no chat template")
            eos = llm.generation_config.eos_token_id
            if (llm_dir / "generation_config.json").exists():
                eos = GenerationConfig.from_pretrained(llm_dir).eos_token_id or eos
            self.eos_token_ids = sorted({*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None})
            self.captioner, self.llm, self.tokenizer = captioner, llm.eval().requires_grad_(False), tokenizer

    def caption(self, image, device: torch.device, should_stop=None) -> str:
        self.load()
        return self.captioner.caption(image, self.caption_tokens, device,  # type: ignore[union-attr]
                                      stopping=_stopping(should_stop))

    @torch.inference_mode()
    def rewrite(self, prompt: str, caption: str, device: torch.device, should_stop=None) -> str:
        self.load()
        inputs = self.tokenizer.apply_chat_template(chat_messages(prompt, caption), add_generation_prompt=True,
                                                    return_dict=True, return_tensors="pt", date_string=CHAT_DATE)
        input_ids = inputs["input_ids"].to(device)
        generated = self.llm.generate(  # type: ignore[union-attr]
            input_ids=input_ids, attention_mask=inputs["attention_mask"].to(device), max_new_tokens=self.max_tokens,
            do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id or self.eos_token_ids[0], stopping_criteria=_stopping(should_stop))
        return decode_new_tokens(self.tokenizer, generated, input_ids.shape[1])

    def expand(self, prompt: str, image, device: torch.device | str = "cpu", should_stop=None) -> Expansion:
        """Caption `image` (a PIL image: the first frame) and rewrite `prompt` with it. An empty answer keeps the
        user's prompt. `should_stop` (e.g. a job's cancel flag) is checked after every generated token."""
        device = torch.device(device)
        caption = self.caption(image, device, should_stop)
        rewritten = self.rewrite(prompt, caption, device, should_stop)
        return Expansion(prompt=rewritten or prompt, caption=caption, rewritten=rewritten)
