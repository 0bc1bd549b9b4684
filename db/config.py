"""`[database]` of service.toml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["DatabaseConfig"]


class DatabaseConfig(BaseModel):
    """Where the flake catalogue lives. Empty url: SQLite file in the state directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = ""

    @field_validator("url")
    @classmethod
    def _sqlalchemy_url(cls, v: str) -> str:
        if v and "://" not in v:
            raise ValueError(
                f"not a database URL: {v!r} (expected e.g. 'sqlite:////path/to/flakescan.db')"
            )
        return v
