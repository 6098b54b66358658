"""The safety checker: an image classifier that refuses NSFW inputs and outputs, as fal's hosted endpoints do.

The model is fal's default checker (its toolkit's v2): `Falconsai/nsfw_image_detection`, a ViT-base/16 at 224 px
with the labels `normal` and `nsfw`, loaded with transformers' own classes from a folder in its published Hub layout
(config.json, model.safetensors, preprocessor_config.json). An image is flagged when p(nsfw), from the softmax over
its logits, is above `safety_checker_threshold` (0.5 as fal's toolkit); a video when the largest p(nsfw) of
`safety_checker_frames` frames sampled uniformly (one batch) is.

Where the weights come from (`--safety-checker`): `auto` is the tiny random-weight checker for `--model tiny`, else
MODEL/safety_checker (a model folder that carries its own), else WEIGHTS_DIR/safety_checker (pinned in weights.lock,
pulled by `ltxserve weights pull`); `tiny`; a PATH; or `off` (nothing is checked; requests asking for it are told
so in their logs). A checker that is configured but missing stops the server at start, as missing weights do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ltxserve.engine.contract import ContentPolicyViolation, JobContext
from ltxserve.protocol import ERROR_INPUT_PREFIX

if TYPE_CHECKING:
    from ltxserve.config import Settings
    from ltxserve.engine.placement import Placement

log = logging.getLogger("ltxserve.engine")

REPO = "Falconsai/nsfw_image_detection"
FOLDER_NAME = "safety_checker"  # inside the weights folder (weights.lock's dest) or a model folder
REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
NSFW_LABEL = "nsfw"
CONFIG_PATH = Path(__file__).resolve().parent.parent / "weights" / "configs" / "safety_checker.json"


class SafetyCheckerMissing(FileNotFoundError):
    """The checker is configured (on by default) but its weights are not where they should be."""


# --- pure parts ------------------------------------------------------------------------------------------------


def nsfw_label_index(id2label: dict[Any, str]) -> int:
    """The logit index of the `nsfw` label, read from the config (keys may be ints or, from JSON, strings)."""
    found = [int(i) for i, label in id2label.items() if str(label).strip().lower() == NSFW_LABEL]
    if len(found) != 1:
        raise ValueError(f"the safety checker's id2label must name exactly one {NSFW_LABEL!r} label, got {id2label}")
    return found[0]


def sample_frame_indices(num_frames: int, count: int) -> list[int]:
    """`count` frame indices spread uniformly over the video, first and last included (every frame if fewer)."""
    if num_frames <= 0:
        return []
    if count >= num_frames:
        return list(range(num_frames))
    if count <= 1:
        return [0]
    return sorted({int(round(i * (num_frames - 1) / (count - 1))) for i in range(count)})


@dataclass(frozen=True)
class Verdict:
    score: float  # p(nsfw); for frames, the largest of the sampled ones
    flagged: bool
    frame: int | None = None  # the frame the score came from
    checked: int = 1  # images scored


def verdict(scores: Sequence[float], threshold: float, frames: Sequence[int] | None = None) -> Verdict:
    """Reduce per-image scores with the maximum: one flagged frame flags the video."""
    best = int(np.argmax(scores))
    return Verdict(score=float(scores[best]), flagged=float(scores[best]) > threshold,
                   frame=None if frames is None else int(frames[best]), checked=len(scores))


# --- the model -------------------------------------------------------------------------------------------------


def _processor_class():
    # transformers 5 names the PIL implementation apart (its default one needs torchvision); 4.x has only this one.
    try:
        from transformers import ViTImageProcessorPil as processor
    except ImportError:  # pragma: no cover - transformers 4
        from transformers import ViTImageProcessor as processor
    return processor


class SafetyChecker:
    """A loaded classifier: p(nsfw) of images, and the verdicts the endpoint acts on."""

    def __init__(self, model: Any, processor: Any, *, threshold: float = 0.5, frames: int = 8):
        self.model = model
        self.processor = processor
        self.threshold = threshold
        self.frames = frames
        self.nsfw_index = nsfw_label_index(model.config.id2label)

    @classmethod
    def load(cls, folder: Path | str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             threshold: float = 0.5, frames: int = 8) -> "SafetyChecker":
        from transformers import ViTForImageClassification

        folder = Path(folder)
        missing_files(folder, raise_error=True)
        model = ViTForImageClassification.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        processor = _processor_class().from_pretrained(folder, local_files_only=True)
        model.to(device).eval().requires_grad_(False)
        return cls(model, processor, threshold=threshold, frames=frames)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _model_size(self, image: Any) -> Any:
        """Resized to the model's input with the processor's own filter first, as the processor would: the same
        pixels, without the processor's full-size float copies of a large image (an 8000x8000 photo: ~0.9 GB)."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        size = self.processor.size
        target = (size["width"], size["height"]) if "width" in size else (size["shortest_edge"],) * 2
        image = image if image.mode == "RGB" else image.convert("RGB")
        return image.resize(target, resample=Image.Resampling(int(self.processor.resample)))

    def scores(self, images: Sequence[Any]) -> list[float]:
        """p(nsfw) of each image (PIL images or uint8 HxWx3 arrays), in one batch."""
        batch = [self._model_size(image) for image in images]
        pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
        param = next(self.model.parameters())
        with torch.inference_mode():
            logits = self.model(pixel_values=pixels.to(param.device, param.dtype)).logits
            probs = torch.softmax(logits.float(), dim=-1)[:, self.nsfw_index]
        return [float(p) for p in probs.cpu()]

    def check_image(self, image: Any) -> Verdict:
        return verdict(self.scores([image]), self.threshold)

    def check_frames(self, frames: np.ndarray) -> Verdict:
        """Sample `self.frames` frames of a (frames, height, width, 3) uint8 video; flag on the largest score."""
        indices = sample_frame_indices(len(frames), self.frames)
        return verdict(self.scores([np.ascontiguousarray(frames[i]) for i in indices]), self.threshold, indices)


def missing_files(folder: Path, *, raise_error: bool = False) -> list[str]:
    missing = [name for name in REQUIRED_FILES if not (Path(folder) / name).is_file()]
    if missing and raise_error:
        raise SafetyCheckerMissing(f"{folder}: the safety checker's {', '.join(missing)} missing")
    return missing


# --- where it comes from and where it runs -----------------------------------------------------------------------


def resolve_folder(settings: "Settings", model_source: str) -> Path | None:
    """The checker's folder for `settings.safety_checker` and the served model (its source: 'tiny' or a folder);
    None when it is off. Raises SafetyCheckerMissing when it is on and not there."""
    choice = settings.safety_checker
    if choice == "off":
        return None
    if choice == "tiny" or (choice == "auto" and model_source == "tiny"):
        return tiny_safety_checker_folder()
    if choice != "auto":
        missing_files(Path(choice), raise_error=True)
        return Path(choice)
    candidates = []
    if model_source:
        source = Path(model_source)
        candidates.append((source.parent if source.is_file() else source) / FOLDER_NAME)
    candidates.append(Path(settings.weights_dir) / FOLDER_NAME)
    for folder in dict.fromkeys(candidates):
        if not missing_files(folder):
            return folder
    raise SafetyCheckerMissing(
        f"the safety checker ({REPO}; enable_safety_checker is on by default, as in fal's schema) is not in "
        f"{' or '.join(str(c) for c in dict.fromkeys(candidates))}: run `ltxserve weights pull --component "
        f"{FOLDER_NAME}` (or `ltxserve weights import DIR`), or point --safety-checker at its folder, or serve "
        "without it with --safety-checker off")


def count_params(config_path: Path = CONFIG_PATH) -> int:
    """Parameters of the real checker, counted on the meta device from its configuration."""
    from transformers import ViTConfig, ViTForImageClassification

    raw = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = ViTForImageClassification(ViTConfig(**raw))
    return sum(p.numel() for p in model.parameters())


def gpu_bytes(params: int, frames: int, *, weight_bytes: int = 2, image_size: int = 224, patch: int = 16,
              hidden: int = 768, heads: int = 12) -> int:
    """The checker resident on the GPU: its weights plus the activations of one batch of `frames` images (the MLP's
    4x hidden, q/k/v/out and one head's attention scores at a time, in the weights' dtype) and a margin."""
    tokens = (image_size // patch) ** 2 + 1
    activations = frames * tokens * (10 * hidden + heads * tokens) * weight_bytes
    return params * weight_bytes + activations + 64 * 1024**2


def fits_beside(placement: "Placement", need_bytes: int) -> bool:
    """True when the placement's planned peak leaves room for the checker on the GPU: it never displaces the model."""
    return bool(placement.free_bytes) and placement.free_bytes - placement.peak_bytes >= need_bytes


def describe_placement(placement: "Placement | None", params: int, frames: int) -> str:
    """doctor's line: the checker's size and where the server would put it beside this plan."""
    need = gpu_bytes(params, frames)
    head = f"safety checker ({REPO}, {params / 1e6:.1f}M parameters, ~{need / 1024**3:.2f} GiB on the GPU in bf16)"
    if placement is None:
        return f"{head}: on the GPU when the plan leaves that much free, else on the CPU"
    where = "on the GPU beside the model" if fits_beside(placement, need) else "on the CPU (the plan leaves no room)"
    return f"{head}: {where}"


# --- what the endpoint calls ------------------------------------------------------------------------------------


class SafetyGate:
    """The endpoint's checks: the input image before any GPU work, sampled output frames before anything is stored.
    The checker is loaded on its first use, on the device chosen at start."""

    def __init__(self, folder: Path | None, *, device: torch.device, dtype: torch.dtype, threshold: float,
                 frames: int):
        self.folder = folder
        self.device = device
        self.dtype = dtype
        self.threshold = threshold
        self.frames = frames
        self._checker: SafetyChecker | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_endpoint(cls, settings: "Settings", model_source: str, device: torch.device, dtype: torch.dtype,
                     placement: "Placement | None") -> tuple["SafetyGate", "Placement | None"]:
        """Resolve the weights now (a missing checker stops the start) and choose its device: the GPU beside the
        model when the placement's plan leaves room for it (every request is then planned with it subtracted),
        else the CPU; the model's device where there is no plan (the CPU, or a tiny model)."""
        folder = resolve_folder(settings, model_source)
        threshold, frames = settings.safety_checker_threshold, settings.safety_checker_frames
        if folder is None:
            return cls(None, device=torch.device("cpu"), dtype=torch.float32, threshold=threshold,
                       frames=frames), placement
        checker_device, checker_dtype = device, dtype if device.type == "cuda" else torch.float32
        if placement is not None and device.type == "cuda":
            need = gpu_bytes(count_params(), frames)
            if fits_beside(placement, need):
                from dataclasses import replace

                placement = replace(placement, free_bytes=placement.free_bytes - need)
            else:
                checker_device, checker_dtype = torch.device("cpu"), torch.float32
        log.info("safety checker: %s on %s (%s), threshold %g, %d frames per video", folder, checker_device,
                 str(checker_dtype).removeprefix("torch."), threshold, frames)
        return cls(folder, device=checker_device, dtype=checker_dtype, threshold=threshold, frames=frames), placement

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def checker(self) -> SafetyChecker:
        with self._lock:
            if self._checker is None:
                self._checker = SafetyChecker.load(self.folder, device=self.device, dtype=self.dtype,
                                                   threshold=self.threshold, frames=self.frames)
            return self._checker

    def _wanted(self, asked: bool, ctx: JobContext) -> bool:
        if not asked:
            return False
        if not self.enabled:
            ctx.log("enable_safety_checker: this server runs no safety checker (--safety-checker off)", "WARN")
            return False
        return True

    def check_input(self, image: Any, image_url: str, asked: bool, ctx: JobContext) -> None:
        if not asked:
            ctx.log("safety checker: skipped (enable_safety_checker is false)")
        if not self._wanted(asked, ctx):
            return
        result = self.checker().check_image(image)
        ctx.log(f"safety checker: input image p(nsfw) {result.score:.3f} "
                f"({'flagged' if result.flagged else 'passed'}, threshold {self.threshold:g})")
        if result.flagged:
            shown = image_url if len(image_url) <= ERROR_INPUT_PREFIX else image_url[:ERROR_INPUT_PREFIX] + "..."
            raise ContentPolicyViolation(
                "The input image was flagged by the safety checker (nsfw content); nothing was generated.",
                loc=("body", "image_url"), input=shown)

    def check_output(self, frames: np.ndarray, asked: bool, ctx: JobContext) -> None:
        if not asked or not self.enabled:
            return
        result = self.checker().check_frames(frames)
        ctx.log(f"safety checker: output video p(nsfw) {result.score:.3f} at frame {result.frame} "
                f"(max of {result.checked} sampled frames; {'flagged' if result.flagged else 'passed'}, "
                f"threshold {self.threshold:g})")
        if result.flagged:
            raise ContentPolicyViolation(
                "The generated video was flagged by the safety checker (nsfw content) and was not stored.",
                loc=("body",))


# --- the tiny checker (--model tiny, tests) ---------------------------------------------------------------------

TINY_VIT = dict(image_size=64, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, id2label={0: "normal", 1: NSFW_LABEL},
                label2id={"normal": 0, NSFW_LABEL: 1})
TINY_VERDICTS = ("normal", "nsfw", "bright")


def build_tiny_safety_checker(folder: Path | str, *, verdict: str = "normal", seed: int = 0,
                              bright_above: float = 0.1) -> Path:
    """Save a tiny ViTForImageClassification (the real architecture at toy size) and its ViT processor in the
    Hub layout. `verdict`: "normal" (random body; the classifier's bias makes p(nsfw) ~1e-9 for every image),
    "nsfw" (~1 - 1e-9), or "bright": hand-set weights whose p(nsfw) rises with the image's mean brightness and
    crosses 0.5 at `bright_above` (0..1), so a test can pass a dark input and flag a brighter output."""
    from transformers import ViTConfig, ViTForImageClassification

    if verdict not in TINY_VERDICTS:
        raise ValueError(f"verdict must be one of {TINY_VERDICTS}, got {verdict!r}")
    folder = Path(folder)
    model = ViTForImageClassification(ViTConfig(**TINY_VIT)).eval()
    processor = _processor_class()(size={"height": TINY_VIT["image_size"], "width": TINY_VIT["image_size"]},
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if verdict == "bright":
            _set_brightness_weights(model)
            level = torch.full((1, 3, TINY_VIT["image_size"], TINY_VIT["image_size"]), 2 * bright_above - 1)
            margin = model(pixel_values=level).logits[0]
            model.classifier.bias[1] -= margin[1] - margin[0]  # p(nsfw) = 0.5 exactly at that brightness
        else:
            for _, p in sorted(model.named_parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            model.classifier.weight.mul_(0.01)
            sign = 1.0 if verdict == NSFW_LABEL else -1.0
            model.classifier.bias.copy_(torch.tensor([-10.0 * sign, 10.0 * sign]))
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def _set_brightness_weights(model: Any) -> None:
    """Weights that make the CLS token carry the image's mean brightness: each patch embeds as [m, 1, -1, 0...]
    (m its mean pixel in [-1, 1]); the first layer's attention, made uniform (q = k = 0), averages the normalised
    first feature of every token into the CLS token's fourth; every other branch adds nothing; the classifier reads
    that feature after the final layer norm. Monotonic in brightness."""
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.fill_(1.0 if name.endswith(("layernorm_before.weight", "layernorm_after.weight", "vit.layernorm.weight"))
                else 0.0)
    # transformers 4 names the first layer's value / output projections vit.encoder.layer.0.attention.attention.value
    # and ...attention.output.dense, transformers 5 vit.layers.0.attention.v_proj / o_proj
    first = [n for n in params if n.startswith(("vit.encoder.layer.0.", "vit.layers.0."))]
    value = next(n for n in first if n.endswith(("attention.value.weight", "v_proj.weight")))
    out = next(n for n in first if n.endswith(("output.dense.weight", "o_proj.weight")) and "attention" in n)
    conv = params["vit.embeddings.patch_embeddings.projection.weight"]
    conv[0].fill_(1.0 / conv[0].numel())
    params["vit.embeddings.patch_embeddings.projection.bias"][1:3] = torch.tensor([1.0, -1.0])
    params["vit.embeddings.cls_token"][0, 0, 1:3] = torch.tensor([1.0, -1.0])
    params[value][3, 0] = 1.0
    params[out][3, 3] = 1.0
    model.classifier.weight[1, 3] = 30.0


def tiny_safety_checker_folder(verdict: str = "normal") -> Path:
    """The tiny checker built once per machine (a temp folder keyed by its definition), shared by processes."""
    key = hashlib.sha256(json.dumps([TINY_VIT, verdict, 1], sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"ltxserve-tiny-safety-checker-{os.getuid()}-{key}"
    if not missing_files(folder):
        return folder
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    build_tiny_safety_checker(staging, verdict=verdict)
    try:
        staging.rename(folder)  # atomic: another process may have won the race, which is as good
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
