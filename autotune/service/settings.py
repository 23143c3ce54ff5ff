"""The service's settings: where it listens, which storage and Ray cluster it drives, who may call it, and
the request limits. Validated at construction (one-line :class:`SpecError` naming the field)."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autotune.errors import SpecError
from autotune.service.auth import Tokens
from autotune.spec import format_validation_error
from autotune.store.storage import mask_url

__all__ = ["Settings", "make_settings", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseModel):
    """What ``autotune serve`` runs with (its flags; the tokens come from $AUTOTUNE_TOKENS or --token-file)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    host: str = Field("127.0.0.1", min_length=1, description="Interface to bind; loopback unless tokens are set.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    storage: str = Field(min_length=1, description="SQLAlchemy URL of the study storage (shared with the CLI).")
    ray_address: str | None = Field(None, description="Ray cluster the study drivers join [default: local Ray].")
    max_concurrent_studies: int = Field(4, ge=1, description="Studies running at once on this server.")
    max_studies_per_token: int = Field(2, ge=1, description="Studies running at once per token.")
    max_spec_bytes: int = Field(256 * 1024, ge=1024, description="Largest accepted request body, bytes.")
    max_trials: int = Field(10_000, ge=1, description="Largest accepted search.n_trials.")
    tokens: Tokens = Field(default_factory=Tokens, description="Accepted bearer tokens (their digests).")
    public_read: bool = Field(False, description="Reads (GET) need no token.")
    poll_s: float = Field(0.5, gt=0, le=10, description="How often progress streams and the runner look at storage.")
    stream_max_s: float = Field(3600.0, gt=0, description="Longest a progress stream stays open.")

    @model_validator(mode="after")
    def _auth_off_loopback(self) -> Settings:
        if not is_loopback(self.host) and not self.tokens:
            raise ValueError(f"host: {self.host} is not a loopback address; binding it needs tokens "
                             "($AUTOTUNE_TOKENS or --token-file)")
        return self

    @property
    def display_storage(self) -> str:
        """The storage URL with its password masked, for messages and logs."""
        return mask_url(self.storage)


def make_settings(**values: Any) -> Settings:
    """:class:`Settings` from keyword values; raises :class:`SpecError` with one line naming the field."""
    try:
        return Settings(**values)
    except ValidationError as e:
        first = e.errors()[0]
        if not first["loc"]:  # a check across fields: its message names the field
            raise SpecError(first["msg"].removeprefix("Value error, ")) from e
        raise SpecError(format_validation_error(e, Settings)) from e
