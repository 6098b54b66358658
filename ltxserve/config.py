"""The one home of configuration: every setting, its default and its LTXSERVE_* environment variable.

Built once at start-up (`Settings()`, or from CLI flags layered on top) and passed down; no other module reads
the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LTX_I2V_ENDPOINT = "ltxserve.engine.schema:SPEC"

Dtype = Literal["auto", "bf16", "fp16", "fp32", "fp8"]
Memory = Literal["auto", "gpu", "offload", "sequential"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LTXSERVE_", env_nested_delimiter="__", extra="ignore")

    # --- serving -------------------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    public_url: str | None = Field(
        default=None, description="Base URL clients reach this server at; used in status/result/file URLs."
    )
    api_keys: list[str] = Field(default_factory=list, description="Accepted keys for `Authorization: Key <key>`.")
    allow_unauthenticated_public: bool = Field(
        default=False, description="Permit binding a non-loopback address with no API key configured."
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    max_upload_bytes: int = 100 * 1024 * 1024
    sse_keepalive_seconds: float = 15.0

    # --- jobs ----------------------------------------------------------------------------------------------------
    store: str | None = Field(
        default=None, pattern=r"^(sqlite|(redis|rediss|unix)://.+)$", description="Job store: unset (or sqlite) = the SQLite file under the data dir; "
        "redis://HOST:PORT/DB = a Redis server shared by API and worker nodes on several hosts.",
    )
    files: Path | None = Field(
        default=None, description="Folder holding uploads and outputs (default DATA_DIR/files); several hosts may "
        "point it at one shared mount (NFS, SMB).",
    )
    workers: int | None = Field(
        default=None, ge=0, description="Worker processes; default one per CUDA GPU, else one; 0 = an API node "
        "alone (workers run as `ltxserve worker` on the same store).",
    )
    gpu: int | None = Field(default=None, ge=0, description="`ltxserve worker`: the GPU index this worker uses.")
    endpoints: list[str] = Field(
        default_factory=lambda: [LTX_I2V_ENDPOINT],
        description="Endpoint specs to serve, as 'module:attribute' import paths.",
    )
    result_retention_seconds: int = 24 * 3600
    max_attempts: int = Field(default=2, description="A job whose worker died is retried until this many attempts.")
    worker_heartbeat_seconds: float = 2.0
    worker_lost_after_seconds: float = Field(
        default=30.0, gt=0, description="A worker whose last heartbeat is older than this is taken for dead and its "
        "jobs are retried or failed (allow for clock skew between hosts).",
    )
    worker_restart_backoff_seconds: float = 1.0
    worker_max_failed_starts: int = Field(
        default=3, ge=1,
        description="Consecutive worker starts that die before the model loads, after which the slot is not "
        "restarted; when every slot gives up, queued jobs fail with the reason and `serve` exits non-zero.",
    )

    # --- logging -------------------------------------------------------------------------------------------------
    log_level: LogLevel = Field(default="info", description="Server and worker log level.")
    log_format: LogFormat = Field(default="text", description="text, or json: one JSON object per line.")
    access_log: bool = Field(default=False, description="Log every HTTP request (method, path, status).")

    # --- webhooks ------------------------------------------------------------------------------------------------
    webhook_max_attempts: int = 10
    webhook_initial_backoff_seconds: float = 5.0
    webhook_max_backoff_seconds: float = 1800.0
    webhook_timeout_seconds: float = 15.0
    webhook_user_id: str = "ltxserve"

    # --- engine --------------------------------------------------------------------------------------------------
    model: str = Field(default="auto", description="auto | tiny | PATH to a checkpoint folder or file.")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N")
    dtype: Dtype = Field(default="auto", description="Weight dtype (fp8: transformer weights only).")
    use_triton_kernels: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Triton kernels for the transformer's fused norm/modulation, gated residual and q/k norm + RoPE "
                    "(kernels/): auto = on CUDA when triton is installed; on = also on the CPU (interpreted, slow).",
    )
    attention_backend: Literal["auto", "default", "fa3", "cudnn", "flash", "efficient", "math"] = Field(
        default="auto",
        description="Self-attention kernel (kept under STG): auto = flash-attention 3 on Hopper when installed, "
                    "else SDPA cuDNN / flash / efficient, whichever this GPU has; default = diffusers' dispatch.",
    )
    compile_blocks: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="torch.compile each transformer block (regional compilation), warmed up at start for the "
                    "default geometry: auto = on CUDA.",
    )
    fp8_matmul: Literal["auto", "scaled_mm", "dequant"] = Field(
        default="auto",
        description="With --dtype fp8, multiply in fp8 (auto: on GPUs of compute capability 8.9+) or dequantize the "
                    "fp8 weights to bf16 per layer (any device).",
    )
    memory: Memory = Field(default="auto", description="Where the model's components live (placement).")
    safety_checker: str = Field(
        default="auto",
        description="auto | tiny | off | PATH: the NSFW image classifier behind enable_safety_checker (on by "
                    "default, as in fal's schema). auto: the tiny one for --model tiny, else MODEL/safety_checker, "
                    "else WEIGHTS_DIR/safety_checker (`ltxserve weights pull`); off: nothing is checked.")
    safety_checker_threshold: float = Field(default=0.5, ge=0.0, le=1.0,
                                            description="Flag an image when its p(nsfw) is above this.")
    safety_checker_frames: int = Field(default=8, ge=1, le=257,
                                       description="Output frames checked, sampled uniformly (one batch).")

    # --- weights (weights.lock, `ltxserve weights`) ------------------------------------------------------------
    weights_dir: Path = Field(default=Path("./weights"), description="Folder holding the pinned 13B weights.")
    weights_lock: Path | None = Field(default=None, description="weights.lock to use; default: the one shipped.")
    weights_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("LTXSERVE_WEIGHTS_BASE_URL", "HF_ENDPOINT", "weights_base_url"),
        description="Hub (or mirror) to confirm and download weights from; default huggingface_hub's (HF_ENDPOINT).",
    )
    hf_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("LTXSERVE_HF_TOKEN", "HF_TOKEN", "hf_token"),
        description="Token for gated / private repositories (weights and Hub LoRAs); sent only to the Hub.",
    )
    weights_auto_pull: bool = Field(default=True, description="Pull missing weights when serving the 13B model.")
    weights_pull_workers: int = Field(default=4, description="Files downloaded in parallel.")

    # --- LoRAs ------------------------------------------------------------------------------------------------------
    lora_dirs: list[Path] = Field(default_factory=list, description="Local folders LoRA paths may point into.")
    lora_max_bytes: int = Field(default=2 * 1024**3, description="Largest LoRA file accepted.")
    lora_cache_bytes: int = Field(default=20 * 1024**3, description="Disk cache of downloaded LoRAs (LRU eviction).")

    # --- fetching inputs (image_url, LoRA URLs) -------------------------------------------------------------------
    fetch_max_bytes: int = 50 * 1024 * 1024
    fetch_timeout_seconds: float = 30.0
    fetch_allow_private_networks: bool = False

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def files_dir(self) -> Path:
        return self.files if self.files is not None else self.data_dir / "files"

    def base_url(self) -> str:
        """The URL this server is reached at, for URLs it hands out."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    # --- issue 9: input images ------------------------------------------------------------------------------------
    max_image_pixels: int = Field(
        default=100_000_000, description="Largest input image (width x height) decoded; larger ones are refused "
        "with 422 image_too_large before decoding. Decoding holds about 4 bytes per pixel.")

    # --- issue 10: expand_prompt (the prompt enhancer; engine/prompt_enhancer.py) -----------------------------------
    prompt_enhancer_dir: Path | None = Field(
        default=None, description="Folder holding the prompt enhancer's captioner/ and llm/ (default: "
        "WEIGHTS_DIR/prompt_enhancer, where `ltxserve weights pull --component prompt_captioner --component "
        "prompt_llm` puts them).")
    prompt_enhancer_caption_tokens: int = Field(
        default=1024, ge=1, description="Most new tokens of the image caption (Florence-2, beam search of 3).")
    prompt_enhancer_max_tokens: int = Field(
        default=256, ge=1, description="Most new tokens of the expanded prompt (Llama 3.2 3B, greedy).")
