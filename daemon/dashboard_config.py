"""`[dashboard]` of service.toml: where `flakescan dashboard` listens."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DashboardConfig"]


class DashboardConfig(BaseModel):
    """Loopback unless `allow_remote`: the page shows the lab's chips to whoever opens it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8766, ge=0, le=65535)
    allow_remote: bool = False

    @model_validator(mode="after")
    def _loopback(self) -> DashboardConfig:
        if self.allow_remote or self.host == "localhost":
            return self
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"host = {self.host!r} is not loopback; set allow_remote = true to serve it"
            )
        return self
