"""One settings object for every step: defaults < environment (RECSYS_*) < explicit overrides.

The CLI passes its flags as overrides; the DAG passes its params the same way, so a setting means
the same thing wherever it is read.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

OFFICIAL_ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
OFFICIAL_ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"

DEVICES = ("auto", "cpu", "cuda")
SAMPLERS = ("auto", "dgl", "torch")


class ConfigError(ValueError):
    """A setting is invalid; the CLI turns it into exit code 2."""


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".recsys")
    milvus_uri: str = ""  # empty: a Milvus Lite file under home
    milvus_token: str = ""  # a Milvus server's "user:password" or API key; empty: no authentication
    db_url: str = ""  # empty: a SQLite file under home
    snapshot: str = OFFICIAL_ML1M_URL
    skip_checksum: bool = False
    unzip_max_bytes: int = 4 << 30  # how far a snapshot archive may expand (ml-32m: ~0.9 GB) ...
    unzip_max_ratio: float = 100.0  # ... and how many times its own size (MovieLens zips: ~5x)
    # training
    device: str = "auto"
    sampler: str = "auto"
    epochs: int = 8
    embed_dim: int = 64
    batch_size: int = 1024
    negatives: int = 1024  # movies drawn per step for the sampled softmax; 0 scores every movie (full softmax)
    lr: float = 0.01  # on ml-100k 3e-3 stopped short of transitions (test HR@10 0.146 vs 0.168 now); ml-1m alike
    seed: int = 42
    # serving and promotion
    keep_versions: int = 2
    run_date: str = ""  # the run's (logical) date, YYYY-MM-DD; empty: today (UTC)
    quality_margin: float = 0.02
    force: bool = False
    # the recommendations API
    api_key: str = ""  # `recsys serve`'s key (X-API-Key); required when it binds beyond localhost
    serve_workers: int = 1  # API worker processes
    store_timeout_s: float = 2.0  # every serving call to Milvus or the catalog; then 503
    milvus_linger_s: float = 300.0  # the shared local milvus-lite server stops this long after its last user

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))  # a str from a caller or a DAG param is fine too

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def resolved_milvus_uri(self) -> str:
        """The URI, or (unset) the Milvus Lite data folder that a shared local server serves."""
        return self.milvus_uri or str((self.home / "milvus.db").resolve())

    @property
    def resolved_db_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.home / 'catalog.db').resolve()}"

    @property
    def resolved_run_date(self) -> date:
        return date.fromisoformat(self.run_date) if self.run_date else datetime.now(UTC).date()

    def validate(self) -> Settings:
        if self.device not in DEVICES:
            raise ConfigError(f"device: {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler: {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        for name in ("epochs", "embed_dim", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.unzip_max_bytes < 1 or self.unzip_max_ratio <= 1:
            raise ConfigError("unzip_max_bytes must be positive and unzip_max_ratio above 1, got "
                              f"{self.unzip_max_bytes}, {self.unzip_max_ratio}")
        if self.negatives < 0:
            raise ConfigError(f"negatives: must be at least 0 (0: every movie), got {self.negatives}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be positive, got {self.lr}")
        if self.run_date:
            try:
                date.fromisoformat(self.run_date)
            except ValueError:
                raise ConfigError(f"run_date: {self.run_date!r} is not a date (YYYY-MM-DD)") from None
        if self.keep_versions < 1:
            raise ConfigError(f"keep_versions: must be at least 1, got {self.keep_versions}")
        if not 0 <= self.quality_margin < 1:
            raise ConfigError(f"quality_margin: must be in [0, 1), got {self.quality_margin}")
        if self.serve_workers < 1:
            raise ConfigError(f"serve_workers: must be at least 1, got {self.serve_workers}")
        if not 0 < self.store_timeout_s <= 600:
            raise ConfigError(f"store_timeout_s: must be in (0, 600], got {self.store_timeout_s}")
        if self.milvus_linger_s < 0:
            raise ConfigError(f"milvus_linger_s: must be at least 0, got {self.milvus_linger_s}")
        return self

    def replace(self, **overrides: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None}).validate()

    def training_params(self) -> dict[str, Any]:
        """The settings that change a trained model (and so its model_version)."""
        return {k: getattr(self, k) for k in ("epochs", "embed_dim", "batch_size", "negatives", "lr", "seed", "sampler")}

    def public(self) -> dict[str, Any]:
        """Settings safe to print or log: passwords in URLs are masked."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["home"] = str(self.home)
        out["db_url"] = mask_password(self.resolved_db_url)
        out["milvus_uri"] = mask_password(self.resolved_milvus_uri)
        out["milvus_token"] = "***" if self.milvus_token else ""
        out["api_key"] = "***" if self.api_key else ""
        return out


def mask_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    if "://" not in url or "@" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL (e.g. http://user:pw@milvus): mask by hand
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


_ENV: dict[str, tuple[str, type]] = {
    "home": ("RECSYS_HOME", Path),
    "milvus_uri": ("RECSYS_MILVUS_URI", str),
    "milvus_token": ("RECSYS_MILVUS_TOKEN", str),
    "db_url": ("RECSYS_DB_URL", str),
    "snapshot": ("RECSYS_SNAPSHOT", str),
    "skip_checksum": ("RECSYS_SKIP_CHECKSUM", bool),
    "unzip_max_bytes": ("RECSYS_UNZIP_MAX_BYTES", int),
    "unzip_max_ratio": ("RECSYS_UNZIP_MAX_RATIO", float),
    "device": ("RECSYS_DEVICE", str),
    "sampler": ("RECSYS_SAMPLER", str),
    "epochs": ("RECSYS_EPOCHS", int),
    "embed_dim": ("RECSYS_EMBED_DIM", int),
    "batch_size": ("RECSYS_BATCH_SIZE", int),
    "negatives": ("RECSYS_NEGATIVES", int),
    "lr": ("RECSYS_LR", float),
    "seed": ("RECSYS_SEED", int),
    "keep_versions": ("RECSYS_KEEP_VERSIONS", int),
    "run_date": ("RECSYS_RUN_DATE", str),
    "quality_margin": ("RECSYS_QUALITY_MARGIN", float),
    "api_key": ("RECSYS_API_KEY", str),
    "serve_workers": ("RECSYS_SERVE_WORKERS", int),
    "store_timeout_s": ("RECSYS_STORE_TIMEOUT_S", float),
    "milvus_linger_s": ("RECSYS_MILVUS_LINGER_S", float),
}


def _parse_bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, then `overrides` (None values are ignored)."""
    values: dict[str, Any] = {}
    for name, (var, kind) in _ENV.items():
        raw = os.environ.get(var)
        if raw not in (None, ""):
            try:
                values[name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ConfigError(f"{var}={raw!r}: expected {kind.__name__}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values).validate()
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
