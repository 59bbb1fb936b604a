"""Settings: one frozen dataclass, read from the environment at call time, passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MB = 1024 * 1024
PRIVATE_UMASK = 0o077  # what a component writes (images in Redis, models, logs, tokens): 0600/0700

# price per hour of each flavor; DETSERVE_PRICE_CPU / DETSERVE_PRICE_GPU override them.
DEFAULT_PRICES = {"cpu": 0.10, "gpu": 1.20}


@dataclass(frozen=True)
class Settings:
    """Everything a detserve process needs to know; defaults work on a laptop."""

    data_dir: Path = Path(".detserve")
    database_url: str = ""
    redis_url: str = ""
    admin_token: str = ""
    artifact_token: str = ""  # reads GET /v1/artifacts/{sha256} only: what workers carry
    api_url: str = ""
    autostop_hour_seconds: float = 3600.0
    sweep_seconds: float = 5.0
    deploy_timeout: float = 3600.0  # a Deploying service older than this has lost its deploy
    heartbeat_seconds: float = 5.0
    max_model_bytes: int = 500 * MB
    max_image_bytes: int = 20 * MB
    max_image_pixels: int = 50_000_000
    predict_timeout: float = 30.0
    body_timeout: float = 30.0  # a request body that stalls this long (seconds) ends in 408
    result_ttl: int = 3600
    worker_concurrency: int = field(default_factory=lambda: os.cpu_count() or 2)
    ort_threads: int = 1
    model_cache_size: int = 8
    trt_precision: str = "fp16"  # fp16 where the GPU has fast fp16, else fp32; or "fp32"
    trt_profile: str = "1,8,32"  # min,opt,max batch of the engine when the ONNX batch is dynamic
    trt_workspace_mb: int = 1024
    batch_window_ms: float = 4.0
    shm_dir: str = ""  # a tmpfs directory the API and every worker share (lane/shm.py); "" = none
    access_log: bool = False  # one gunicorn line per request; monitoring already counts them
    prices: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def from_env(
        cls, prefix: str = "DETSERVE_", environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from `DETSERVE_*` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(prefix + f.name.upper())
            if raw is None or f.name == "prices":
                continue
            values[f.name] = _coerce(f.name, raw)
        prices = dict(DEFAULT_PRICES)
        for flavor in prices:
            raw = env.get(f"{prefix}PRICE_{flavor.upper()}")
            if raw is not None:
                prices[flavor] = float(raw)
        return cls(prices=prices, **values).resolved()

    def resolved(self) -> Settings:
        """Fill the defaults that depend on the data dir."""
        data_dir = Path(self.data_dir).expanduser().absolute()
        db = self.database_url or f"sqlite:///{data_dir / 'detserve.db'}"
        return replace(self, data_dir=data_dir, database_url=db)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """Return a copy with some fields replaced (tests, the app factory's mapping)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known}).resolved()

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    def to_env(self) -> dict[str, str]:
        """The environment a child process needs to rebuild these settings."""
        env = {}
        for f in fields(self):
            if f.name == "prices":
                continue
            value = getattr(self, f.name)
            env["DETSERVE_" + f.name.upper()] = str(value)
        for flavor, price in self.prices.items():
            env[f"DETSERVE_PRICE_{flavor.upper()}"] = str(price)
        return env


def _coerce(name: str, raw: str) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]  # annotations are strings here
    if kind == "Path":
        return Path(raw)
    if kind == "bool":
        return raw.lower() in {"1", "true", "yes", "on"}
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def keep_files_private() -> None:
    """From now on, every file this process (and what it execs) creates is its user's only.

    Each component's entry point calls it, so the data dir, logs, database, Redis' files and
    artifacts are never readable by other users of the host, whoever started the component.
    """
    os.umask(PRIVATE_UMASK)


class MissingToken(RuntimeError):
    """No usable admin token: none in the environment, none (or a blank one) in the data dir."""


def read_secret(path: Path) -> str:
    """The secret kept in `path`, or "" when the file is missing or blank (never a valid secret)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def admin_token(settings: Settings) -> str:
    """The admin token: DETSERVE_ADMIN_TOKEN, else the one `detserve up` keeps in the data dir.

    Raises:
        MissingToken: neither holds a token; an empty or whitespace one never counts.
    """
    token = settings.admin_token.strip() or read_secret(settings.data_dir / "admin_token")
    if not token:
        raise MissingToken(
            "no admin token: set DETSERVE_ADMIN_TOKEN to a secret of letters and digits, e.g. "
            "`export DETSERVE_ADMIN_TOKEN=$(openssl rand -hex 32)`, or keep one in "
            f"{settings.data_dir / 'admin_token'} (`detserve up` writes it on first start; "
            "only `detserve up` generates one)")
    return token
