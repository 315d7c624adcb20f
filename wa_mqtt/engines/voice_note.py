"""Voice notes (issue 14): WhatsApp plays an audio message with `ptt` as a voice note only when it is
OGG/Opus (mono, 48 kHz), so any other audio is converted with ffmpeg first.

ffmpeg (and ffprobe, which neonize's audio and video builders call) must be installed: the add-on image
has it; standalone installs need the system package (README). Used by both engines, so the sim reports
what the real engine would send.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from ..errors import ErrorCode
from .base import EngineError

log = logging.getLogger(__name__)

VOICE_NOTE_MIMETYPE = "audio/ogg; codecs=opus"
CONVERT_TIMEOUT = 120.0
_FFMPEG_ARGS = ("-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-vn", "-map_metadata", "-1",
                "-c:a", "libopus", "-b:a", "32k", "-ac", "1", "-ar", "48000", "-application", "voip",
                "-f", "ogg", "pipe:1")


def is_ogg_opus(data: bytes) -> bool:
    """True for an Ogg stream whose first packet is an Opus header (what a voice note must be)."""
    return data[:4] == b"OggS" and b"OpusHead" in data[:128]


async def to_voice_note(data: bytes, timeout: float = CONVERT_TIMEOUT) -> bytes:
    """`data` as OGG/Opus: unchanged when it is already, else converted by ffmpeg. An `engine_error`
    when ffmpeg is missing or cannot read the audio."""
    if is_ogg_opus(data):
        return data
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise EngineError("a voice note needs ffmpeg to convert the audio to OGG/Opus, and it is not installed",
                          code=ErrorCode.ENGINE_ERROR)
    process = await asyncio.create_subprocess_exec(
        ffmpeg, *_FFMPEG_ARGS, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(data), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise EngineError(f"converting the voice note took longer than {timeout:g} s") from None
    if process.returncode != 0 or not is_ogg_opus(out):
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise EngineError(f"the audio could not be converted to a voice note: {reason[0]}")
    log.debug("voice note converted: %d bytes -> %d bytes OGG/Opus", len(data), len(out))
    return out
