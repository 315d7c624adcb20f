"""The pairing QR drawn as a PNG: one drawing for the Home Assistant image entity (`qr/image`) and the
web page. segno is imported on the first QR (~15 ms, once): a bridge whose accounts are all linked
never loads it."""

from __future__ import annotations

import io


def qr_png(code: str, border: int = 2) -> bytes:
    """The QR of `code` as PNG bytes: 6 pixels a module, `border` modules of quiet zone around it."""
    import segno

    buffer = io.BytesIO()
    segno.make(code, error="l", micro=False).save(buffer, kind="png", scale=6, border=border)
    return buffer.getvalue()
