"""The sim's incoming media: `media` of `wa/sim/<phone>/incoming` as the metadata a message declares and
the bytes its download delivers (or the failure it meets), for engines/incoming_media.py to save."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ErrorCode
from .base import EngineError
from .incoming_media import FetchFn

SIM_MEDIA_MAX = 256 * 1024 * 1024  # the most bytes `media.size` alone makes the sim generate


class SimMedia(BaseModel):
    """`media` of `wa/sim/<phone>/incoming`: real bytes (`base64`) or `size` generated ones; with both,
    `size` is what the message claims (a lying size). `fail`: the download fails (`"expired"`: as
    WhatsApp answers for media it no longer holds)."""

    model_config = ConfigDict(extra="forbid")

    mimetype: str | None = None
    base64: str | None = None
    size: int | None = Field(None, ge=0)
    filename: str | None = None
    fail: bool | Literal["expired"] = False

    def declared(self) -> dict[str, Any]:
        """What the message says of its media (the size claimed, which the bytes may belie)."""
        size = self.size
        if size is None and self.base64 is not None:
            data = self.content()
            size = len(data) if data is not None else None
        return {"mimetype": self.mimetype, "size": size, "filename": self.filename}

    def content(self) -> bytes | None:
        if self.base64 is not None:
            try:
                return base64.b64decode(self.base64, validate=True)
            except (binascii.Error, ValueError):
                raise EngineError("bad incoming payload: media.base64 is not base64",
                                  code=ErrorCode.INVALID_REQUEST) from None
        if self.size is not None and self.size <= SIM_MEDIA_MAX:
            return (b"sim media " * (self.size // 10 + 1))[:self.size]
        return None

    def fetcher(self) -> FetchFn:
        async def fetch() -> bytes:
            if self.fail:
                raise EngineError("download failed with status code 410" if self.fail == "expired"
                                  else "sim: media download failed")
            data = self.content()
            if data is None:
                raise EngineError("sim: no media bytes (give base64, or size up to 256 MiB)")
            return data
        return fetch


def media_type(mimetype: str | None) -> str:
    """The message type a sim media's mimetype implies (`image/webp` is a sticker, as WhatsApp sends it)."""
    kind = (mimetype or "").split("/", 1)[0]
    if mimetype == "image/webp":
        return "sticker"
    return kind if kind in ("image", "video", "audio") else "document"
