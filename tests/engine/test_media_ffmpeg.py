"""Media building with the real ffmpeg / ffprobe (issue 14): the voice-note conversion both engines use,
and the ffmpeg calls neonize's own video and audio builders make (duration, thumbnail).

ffmpeg is a documented requirement of the real engine: the add-on image installs it, and so does
`.ci/run`. Without it these tests are skipped, and say why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from neonize.utils.ffmpeg import AFFmpeg

from wa_mqtt.engines.base import EngineError
from wa_mqtt.engines.voice_note import is_ogg_opus, to_voice_note

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg/ffprobe not installed (the add-on image and .ci/run install them)")


def ffmpeg_make(*args: str) -> bytes:
    return subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", *args, "pipe:1"],
                          check=True, capture_output=True).stdout


def probe(data: bytes, folder: Path) -> dict[str, Any]:
    (folder / "probed").write_bytes(data)  # a file: from a pipe ffprobe cannot tell an Ogg's duration
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json",
                          str(folder / "probed")], check=True, capture_output=True).stdout
    return dict(json.loads(out))


async def test_audio_becomes_an_ogg_opus_voice_note(tmp_path: Path) -> None:
    mp3 = ffmpeg_make("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-ac", "2", "-f", "mp3")
    assert not is_ogg_opus(mp3)
    note = await to_voice_note(mp3)
    assert is_ogg_opus(note)
    info = probe(note, tmp_path)
    [stream] = info["streams"]
    assert (stream["codec_name"], stream["channels"], stream["sample_rate"]) == ("opus", 1, "48000")
    assert 1.9 <= float(info["format"]["duration"]) <= 2.2
    assert await to_voice_note(note) is note  # already a voice note: sent as it is


async def test_what_is_not_audio_is_refused_with_ffmpegs_reason() -> None:
    with pytest.raises(EngineError) as refused:
        await to_voice_note(b"this is not audio at all" * 10)
    assert refused.value.code == "engine_error" and "could not be converted" in str(refused.value)


async def test_neonize_builders_ffmpeg_calls_work_here() -> None:
    """build_video_message reads a video's duration and thumbnail with ffprobe / ffmpeg, build_audio_message
    its duration (neonize aioze/client.py): the same calls on real media."""
    video = ffmpeg_make("-f", "lavfi", "-i", "testsrc=duration=1:size=160x120:rate=10", "-pix_fmt", "yuv420p",
                        "-movflags", "frag_keyframe+empty_moov", "-f", "mp4")
    async with AFFmpeg(video) as ffmpeg:
        assert int((await ffmpeg.extract_info()).format.duration) == 1
        thumbnail = await ffmpeg.extract_thumbnail()
    assert thumbnail[:3] == b"\xff\xd8\xff"  # a JPEG
    note = await to_voice_note(ffmpeg_make("-f", "lavfi", "-i", "sine=duration=3", "-f", "wav"))
    async with AFFmpeg(note) as ffmpeg:
        assert int((await ffmpeg.extract_info()).format.duration) == 3
