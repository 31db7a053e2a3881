"""Settings of the HTTP API, read from ``LINEWATCH_API_*`` environment variables.

API keys are kept only as SHA-256 hashes. Give hashes (``LINEWATCH_API_KEY_HASHES``, comma
separated; ``linewatch serve --hash-key KEY`` prints one) or plain keys (``LINEWATCH_API_KEYS``),
which are hashed as the settings load and never kept or logged in plain text.
"""

import hashlib
import re
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of an API key, the only form in which linewatch keeps a key."""
    if not key.strip():
        raise ValueError("an API key must not be empty")
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _split(value: Any) -> Any:
    """Comma-separated text (as environment variables give it) into a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINEWATCH_API_", extra="forbid", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="SHA-256 hex digests of the accepted API keys"
    )
    keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Plain API keys: hashed into key_hashes on load, so this is always empty afterwards",
    )
    max_request_bytes: int = Field(default=20 * MIB, ge=1, description="Larger request bodies get 413")
    auth_required: bool = True

    @model_validator(mode="before")
    @classmethod
    def _hash_plain_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("keys"):
            data = dict(data)
            plain = _split(data.pop("keys"))
            data["key_hashes"] = [*_split(data.get("key_hashes") or []), *(hash_key(k) for k in plain)]
        return data

    @field_validator("key_hashes", mode="before")
    @classmethod
    def _split_hashes(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("key_hashes")
    @classmethod
    def _check_hashes(cls, hashes: list[str]) -> list[str]:
        normalised = [h.strip().lower() for h in hashes]
        for number, h in enumerate(normalised, start=1):
            if not _SHA256_HEX.fullmatch(h):
                raise ValueError(  # never echo the value: it may be a plain key put here by mistake
                    f"entry {number} is not a SHA-256 hex digest (64 hex digits); "
                    "print one with `linewatch serve --hash-key KEY`, or give the plain key in keys"
                )
        return list(dict.fromkeys(normalised))
