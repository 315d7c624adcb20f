"""Outgoing media as every engine reads it, neonize and the sim alike: the bytes loaded under the media
policy (`media.load`: path inside media_dir, base64, URL fetched with its caps and `block_private_urls`),
and a refusal or a read failure turned into the EngineError (and response code) the contract names.
One code path, so a send answers the same on the sim as on WhatsApp."""

from __future__ import annotations

from .. import media
from ..errors import ErrorCode
from ..media import MediaPolicy
from ..model import MediaSource
from .base import EngineError


async def load_media(field: str, source: MediaSource, policy: MediaPolicy) -> bytes:
    """The bytes of outgoing media, read under the media policy (checked again at read time)."""
    try:
        return await media.load(field, source, policy)
    except media.MediaRefused as exc:
        raise EngineError(str(exc), code=exc.code) from None
    except OSError as exc:
        raise EngineError(f"{field}: cannot read the media ({exc})", code=ErrorCode.ENGINE_ERROR) from None
