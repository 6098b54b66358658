"""The hosted endpoint's input and output schema, field for field, plus ltxserve's two documented extensions.

Torch-free: the API imports this module to validate submissions and to publish the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ltxserve.address_policy import AddressRefused, parse_http_url

from ltxserve.engine.contract import EndpointSpec
from ltxserve.protocol import File

ENDPOINT_ID = "fal-ai/ltx-video-13b-dev/image-to-video"
DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"


def _no_bool(value: object) -> object:
    """JSON true/false is not a number here (pydantic's lax mode would take true as 1)."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
    return value


def _valid_text(value: str) -> str:
    """Text must be encodable Unicode: a lone surrogate (valid JSON "\\ud800") would break the tokenizer later."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("string_unicode", "Input should be valid Unicode text (no lone surrogates)") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("string_too_short", "Input should not be blank")
    return value


def _http_url(value: str) -> str:
    """An http(s) URL with a host and a valid port (an address check happens when it is fetched)."""
    try:
        parse_http_url(value)
    except AddressRefused as exc:
        raise PydanticCustomError("value_error", "Invalid URL: {reason}", {"reason": str(exc)}) from None
    return value


Text = Annotated[str, AfterValidator(_valid_text)]


class _Strict(BaseModel):
    # No unknown keys anywhere (a misspelt "sclae" is an error, not a silent default); no NaN or infinities.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LoraWeight(_Strict):
    path: Text = Field(min_length=1, max_length=2048,
                       description="URL, Hugging Face repo id or local path of a LoRA in .safetensors format.")
    weight_name: Text | None = Field(default=None, max_length=512,
                                     description="File inside the repository, when it holds several.")
    scale: float = Field(default=1.0, ge=-4.0, le=4.0, description="Strength of the LoRA.")

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        return _http_url(value) if value.startswith(("http://", "https://")) else value


class ImageToVideoInput(_Strict):

    prompt: Annotated[Text, AfterValidator(_not_blank)] = Field(min_length=1, max_length=10_000,
                                                                description="Text describing the video.")
    negative_prompt: Text = Field(default=DEFAULT_NEGATIVE_PROMPT, max_length=10_000,
                                 description="What the video should not show.")
    loras: list[LoraWeight] = Field(default_factory=list, max_length=8, description=(
        "LoRAs to apply in both passes: https URL, Hugging Face repo id (owner/name[@revision] with weight_name) or a "
        "file under the server's allowed LoRA folders; .safetensors only."))
    resolution: Literal["480p", "720p"] = Field(
        default="720p", description="720p: 1280x720, 720x1280 or 720x720; 480p: 848x480, 480x848 or 480x480.")
    aspect_ratio: Literal["9:16", "1:1", "16:9", "auto"] = Field(
        default="auto", description="'auto' picks the aspect (16:9, 1:1 or 9:16) nearest the input image's.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1,
                             description="Random seed; a random one is chosen and returned when omitted.")
    num_frames: int = Field(default=121, ge=9, le=1441, description=(
        "Frames to generate. The model works on 8k+1 frames: other counts are generated at the next 8k+1 and "
        "the extra frames are dropped."))
    first_pass_num_inference_steps: int = Field(default=30, ge=2, le=100)
    first_pass_skip_final_steps: int = Field(default=3, ge=0, le=99, description=(
        "Final steps of the first pass replaced by one step to zero noise (the reference's "
        "skip_final_inference_steps)."))
    second_pass_num_inference_steps: int = Field(default=30, ge=2, le=100)
    second_pass_skip_initial_steps: int = Field(default=17, ge=0, le=99, description=(
        "Initial steps of the second pass skipped: the upsampled first pass is noised to the first remaining "
        "timestep (the reference's skip_initial_inference_steps)."))
    frame_rate: int = Field(default=30, ge=1, le=120, description="Frames per second of the output; it also "
                                                                  "conditions the model.")
    expand_prompt: bool = Field(default=False, description=(
        "Expand the prompt as the reference's prompt enhancer does: Florence-2 captions the image, Llama 3.2 3B "
        "rewrites the prompt with the caption into one detailed paragraph (~150 words) that leads with the motion. "
        "Deterministic; the result's `prompt` is the expanded prompt and the job log shows the caption. Needs the "
        "server's optional prompt-enhancer weights (422 on this field when they are missing)."))
    reverse_video: bool = Field(default=False, description="Reverse the frame order of the output.")
    enable_safety_checker: bool = Field(default=True, description=(
        "Check the input image and the output video with an NSFW image classifier: a flagged input or output "
        "ends the request with a 422 content_policy_violation, and a flagged video is never stored."))
    image_url: Text = Field(min_length=1, description="The first frame: an http(s) URL or a data: URI.")
    constant_rate_factor: int = Field(default=35, ge=0, le=51, description=(
        "H.264 CRF the input image is compressed with before conditioning (0 = no compression), as the "
        "reference does to match the look of video frames."))
    # --- ltxserve extensions ----------------------------------------------------------------------------------
    width: int | None = Field(default=None, ge=64, le=2048, description=(
        "ltxserve extension: explicit output width, overriding resolution/aspect_ratio (needs height). Sides "
        "that are not multiples of 32 are padded for the model and cropped back."))
    height: int | None = Field(default=None, ge=64, le=2048, description="ltxserve extension: explicit output "
                                                                         "height (needs width).")

    @model_validator(mode="after")
    def _check_combinations(self) -> "ImageToVideoInput":
        if self.first_pass_skip_final_steps >= self.first_pass_num_inference_steps:
            raise ValueError("first_pass_skip_final_steps must be less than first_pass_num_inference_steps")
        if self.second_pass_skip_initial_steps >= self.second_pass_num_inference_steps:
            raise ValueError("second_pass_skip_initial_steps must be less than second_pass_num_inference_steps")
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together")
        return self

    @field_validator("seed", "num_frames", "first_pass_num_inference_steps", "first_pass_skip_final_steps",
                     "second_pass_num_inference_steps", "second_pass_skip_initial_steps", "frame_rate",
                     "constant_rate_factor", "width", "height", mode="before")
    @classmethod
    def _integers_are_not_booleans(cls, value: object) -> object:
        return _no_bool(value)

    @field_validator("image_url")
    @classmethod
    def _check_image_url(cls, value: str) -> str:
        if value.startswith("data:"):
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError("image_url must be an http(s) URL or a data: URI")
        return _http_url(value)


class ImageToVideoOutput(BaseModel):
    video: File = Field(description="The generated video (mp4, H.264).")
    prompt: str = Field(description="The prompt used.")
    seed: int = Field(description="The seed used.")


SPEC = EndpointSpec(
    endpoint_id=ENDPOINT_ID,
    input_model=ImageToVideoInput,
    output_model=ImageToVideoOutput,
    factory="ltxserve.engine.endpoint:ImageToVideoEndpoint",
    summary="LTX-Video 0.9.7 13B dev, image to video: two-pass multi-scale generation as Lightricks' reference.",
)
