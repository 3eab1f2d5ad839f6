"""The gateway's settings: where it listens, its keys, limits and served models (`VECQ_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from ..contract import DEFAULT_MODEL
from ..keys import model_name
from ..settings import ProducerSettings
from .admission import DEFAULT_FLOOR
from .guard import ApiKeys, read_key_file


class GatewaySettings(ProducerSettings):
    """The producer's settings plus where the gateway listens; every field a `VECQ_*` env var.

    `tokenizers` maps model names to dirs holding tokenizer.json; from the environment it reads
    `VECQ_TOKENIZERS="bge-small=/models/bge,e5=/models/e5"`.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    #: Seconds a request waits for its vectors before answering 504 (its job, if no worker took it
    #: yet, is cancelled).
    timeout: float = Field(default=30.0, gt=0)
    tokenizers: Annotated[dict[str, Path], NoDecode] = Field(default_factory=dict)
    #: Bearer keys any of which a request must carry (none: every request is let in);
    #: `VECQ_API_KEYS="k1,k2"`, and/or one per line in `api_key_file` (a mounted Secret).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_key_file: Path | None = None
    #: Models served whatever the workers advertise (scale-from-zero: a request must queue for
    #: the scaler to see it); any other model needs a live worker (`served.py`).
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Requests queued or waiting at once, at most; more get 429 at once (waiting is cheap, one
    #: connection for all, but each waiter is memory and, past the workers' rate, only latency).
    max_in_flight: int = Field(default=4096, ge=1)
    #: With `max_queued_texts` unset, each model's queued-texts limit is sized from its workers'
    #: measured rate (`admission.py`), never below this: with no worker up or none measured
    #: yet, this many texts may queue (scale-from-zero still sees work).
    queued_texts_floor: int = Field(default=DEFAULT_FLOOR, ge=1)
    #: Largest request body read; larger ones get 413 before they are read or parsed.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: Gateway processes sharing the port (uvicorn's workers).  One process is one core: about
    #: 270 one-text requests/s on the H200 host (BENCHMARKS.md, issue 15).  Each has its own
    #: result reader, Redis connections and `max_in_flight`, and its own /metrics.
    processes: int = Field(default=1, ge=1, le=64)

    @field_validator("api_keys", "models", mode="before")
    @classmethod
    def _comma_list(cls, v: object) -> list[str]:
        items = v.split(",") if isinstance(v, str) else list(v)  # type: ignore[call-overload]
        return [str(k).strip() for k in items if str(k).strip()]

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: list[str]) -> list[str]:
        return [canonical_model(m) for m in v]

    def keys(self) -> ApiKeys:
        """Every configured key, the file's included (`ValueError` naming an unreadable file)."""
        from_file = read_key_file(self.api_key_file) if self.api_key_file is not None else []
        return ApiKeys([*self.api_keys, *from_file])

    def to_env(self) -> dict[str, str]:
        """These settings as the `VECQ_*` variables they are read back from (lists
        comma-separated, tokenizers `NAME=PATH,...`): how a child process gets them without
        putting API keys on its command line."""
        env: dict[str, str] = {}
        for name in {*self.model_fields_set, "host", "port"}:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, dict):
                value = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            env[f"VECQ_{name.upper()}"] = str(value)
        return env

    @field_validator("tokenizers", mode="before")
    @classmethod
    def _tokenizers(cls, v: object) -> dict[str, Path]:
        if isinstance(v, dict):
            pairs = list(v.items())
        else:
            items = v.split(",") if isinstance(v, str) else list(v)  # type: ignore[call-overload]
            pairs = [_name_and_path(str(item)) for item in items if str(item).strip()]
        return {canonical_model(str(name)): Path(path) for name, path in pairs}


def _name_and_path(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"{item!r}: expected NAME=PATH (a model dir or bundle holding tokenizer.json)")
    return name.strip(), path.strip()


def canonical_model(name: str) -> str:
    """The vecq model name a request's `model` means ("default": the default model)."""
    if isinstance(name, str) and name.strip().lower() == "default":
        return DEFAULT_MODEL
    return model_name(name)
