"""The one typed settings object; every value comes from `OVIS_BATCH_*` environment variables or defaults."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from storage import S3Options


def _default_home() -> Path:
    return Path.cwd() / ".ovis-batch"


class Settings(BaseSettings):
    """Configuration for producers and workers. Embedded defaults need no server at all."""

    model_config = SettingsConfigDict(env_prefix="OVIS_BATCH_", env_nested_delimiter="__", extra="ignore")

    #: Folder for the embedded defaults (SQLite file, broker folders, local outputs).
    home: Path = Field(default_factory=_default_home)
    #: SQLAlchemy URL; empty means a SQLite file under `home`.
    database_url: str = ""
    #: Celery broker URL; empty means a folder-based broker under `home` (one machine, no server).
    broker_url: str = ""
    #: Where outputs go: "s3://bucket/prefix" or a local folder; empty means `home/outputs`.
    storage_url: str = ""
    #: Roots inputs may be read from (local folders or s3:// prefixes); empty allows the current directory,
    #: the storage URL and `home`.
    input_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # S3-compatible endpoint; credentials fall back to boto3's standard chain when unset.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: str = "auto"

    #: Model backend: "ovis-u1" (real model), "tiny" (random weights, CPU), "fake" (no torch).
    backend: str = "tiny"
    #: Local directory or hub model id (resolved through the local cache) for the "ovis-u1" backend.
    model_path: str = "AIDC-AI/Ovis-U1-3B"
    #: Hub revision to pin (the model's remote code runs on every worker).
    model_revision: str | None = None
    #: "auto", "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    #: Folder where a worker keeps what torch compiles (Inductor, Triton and CUDA caches, the model's remote
    #: code module), so that a new worker process reuses an earlier one's work; unset: `home/compile-cache`,
    #: empty: torch's own defaults. Caches the environment already names are left where they are.
    compile_cache: str | None = None
    #: Largest micro-batch per kind; 0 keeps the backend's own limit.
    caption_batch: int = 0
    generate_batch: int = 0
    edit_batch: int = 0
    #: Torch-free backend only: simulated model time.
    fake_ms_per_item: float = 0.0
    fake_ms_per_batch: float = 0.0
    #: Torch-free backend only, a fault-injection hook for tests: a prompt or instruction containing this text
    #: kills the worker process with SIGKILL when the model reaches it, as a segfault or the kernel's OOM
    #: killer would. Empty (the default) disables it.
    fake_crash_marker: str = ""
    #: Torch-free backend only, a fault-injection hook for tests: a prompt or instruction containing this text
    #: makes the model call never return. Empty (the default) disables it.
    fake_hang_marker: str = ""

    #: Items per Celery task; a chunk should take minutes, never hours. A chunk also bounds the micro-batch,
    #: so fast work wants large chunks (GPU captioning at micro-batches of 256-512: 2048).
    chunk_size: int = Field(default=256, ge=1, le=10_000)
    #: How long a claimed item stays leased to its worker before the reconciler may hand it to another.
    lease_seconds: int = Field(default=600, ge=2)
    #: Broker redelivery of unacknowledged messages; above the longest chunk.
    visibility_timeout_s: int = Field(default=3 * 3600, ge=60)
    #: Seconds between reconciler passes in each worker (expired leases, lost messages); 0 disables.
    reconcile_interval_s: float = Field(default=60.0, ge=0)
    #: Attempts before an item is quarantined as poison.
    max_attempts: int = Field(default=3, ge=1)
    #: Threads fetching and decoding inputs ahead of the model, and encoding/uploading behind it.
    io_threads: int = Field(default=8, ge=1, le=256)
    #: While a chunk ends, claim the job's next items (at most the next chunk's first micro-batch) for this
    #: worker and fetch and decode them, so that the next chunk's model does not start idle.
    read_ahead: bool = True
    #: A worker running a chunk whose model calls, input waits and records have made no progress for this
    #: many seconds is stalled: it says so in the log and in `ovis-batch ping`, hands its items back and
    #: exits, so that its supervisor starts it again. Above the longest single micro-batch.
    stall_timeout_s: float = Field(default=900.0, ge=1.0)
    #: Log lines as `text` (key=value fields after the message) or `json` (one object per line).
    log_format: Literal["text", "json"] = "text"
    #: Processes of a CPU worker (prefork); GPU workers always run one process per GPU.
    concurrency: int = Field(default=1, ge=1, le=256)
    #: Each process of a prefork worker runs on its own share of the cores (see workers/affinity.py).
    pin_cpus: bool = True
    #: Queue name prefix: a job's chunks go to `{queue}.{kind}`.
    queue: str = "ovis"
    #: Queues a worker consumes; empty means every kind's (dedicate a worker with e.g. "ovis.caption").
    queues: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Input limits, checked before decoding.
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_prompt_chars: int = 4000

    # Notifications when a job ends (jobs/notify.py).
    #: Where to POST a job's notification when it ends, unless its submission names another (`--notify-url`);
    #: empty: no notification. http or https only.
    notify_url: str = ""
    #: Hosts a notification URL may name, each a host name (`hooks.example.com`) or `*.` and a domain
    #: (`*.example.com`: any host under it, not the domain itself); empty: any host. The server POSTs to
    #: the URL a submission names, so an API open to others should list its receivers here.
    notify_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Key of the HMAC-SHA256 signature of each notification (`X-Ovis-Batch-Signature`); unset: unsigned.
    notify_secret: SecretStr | None = None
    #: Seconds one delivery attempt may take, connecting and answering.
    notify_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Attempts before a notification is given up: network errors, 429 and 5xx answers are tried again.
    notify_max_attempts: int = Field(default=10, ge=1, le=100)
    #: Seconds before the second attempt; each later one waits twice as long as the one before (at most an
    #: hour), or what the receiver's Retry-After asks within that hour.
    notify_backoff_s: float = Field(default=10.0, gt=0, le=3600)

    # Flower
    flower_port: int = 5555
    flower_basic_auth: SecretStr | None = None

    # HTTP API (`ovis-batch serve`, jobs/http).
    #: Bearer tokens the API accepts, each `name:scopes:sha256hex` with scopes `read` or `submit` (which
    #: implies read) joined by `+`; comma-separated or a JSON list. Only the SHA-256 of a token is kept:
    #: `ovis-batch token new` makes a token and its entry. Empty: the API is open and serves loopback only.
    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Where `ovis-batch serve` listens unless its options say otherwise.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    #: Most items one `POST /v1/jobs` may carry inline; a larger job names a source (a manifest) instead.
    api_max_inline_items: int = Field(default=10_000, ge=1, le=1_000_000)

    @field_validator("input_roots", "queues", "api_tokens", "notify_allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file under `home`."""
        return self.database_url or f"sqlite:///{self.home / 'ovis-batch.db'}"

    @property
    def resolved_broker_url(self) -> str:
        """The broker URL, defaulting to the folder broker under `home`."""
        return self.broker_url or "filesystem://"

    @property
    def resolved_storage_url(self) -> str:
        """Where outputs are written."""
        return self.storage_url or str(self.home / "outputs")

    @property
    def resolved_compile_cache(self) -> Path | None:
        """The compile cache folder; None when the setting is empty (torch's own defaults)."""
        if self.compile_cache is None:
            return self.home / "compile-cache"
        return Path(self.compile_cache).expanduser() if self.compile_cache.strip() else None

    @property
    def embedded(self) -> bool:
        """True when the database is SQLite: migrations run by themselves on first use."""
        return self.resolved_database_url.startswith("sqlite")

    @property
    def allowed_input_roots(self) -> list[str]:
        """Roots inputs may come from."""
        if self.input_roots:
            return list(self.input_roots)
        return [str(Path.cwd()), self.resolved_storage_url, str(self.home)]

    def s3_options(self) -> S3Options:
        """Connection options for the S3-compatible endpoint."""
        secret = self.s3_secret_access_key.get_secret_value() if self.s3_secret_access_key else None
        return S3Options(
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            access_key_id=self.s3_access_key_id,
            secret_access_key=secret,
            addressing_style=self.s3_addressing_style,
            max_pool_connections=max(32, self.io_threads * 2),
        )

    def max_batch_overrides(self) -> dict[str, int]:
        """Micro-batch limits set by the operator, per kind."""
        sizes = {"caption": self.caption_batch, "generate": self.generate_batch, "edit": self.edit_batch}
        return {kind: size for kind, size in sizes.items() if size > 0}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
