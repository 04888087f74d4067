"""The length of audio counted from what the file holds, not from what its header says.

A transcription answered as ``text``, ``srt`` or ``vtt`` reports no usage, so it
is billed on the gateway's own measure of the upload. A header is the client's
word: an MP3 whose Xing frame says "1 frame" in front of 26 s of frames, a WAV
whose data chunk says 1 s in front of 30 s, a FLAC whose STREAMINFO, an Ogg whose
last granule or an M4A whose ``mdhd`` says 1 s in front of an hour, would be billed
a fraction of what the upstream transcribes. So the audio is counted as a decoder
finds it: MP3 frame by frame (syncing on each frame header), WAV by the bytes that
follow its data chunk header, FLAC, Ogg (Opus, Vorbis) and MP4/M4A (AAC) by their
frames or packets (``audiopackets.py``, ``audiomp4.py``). Other formats (and those
codecs in other containers): None, the length is not counted.
"""

from __future__ import annotations

from .audiomp4 import mp4_seconds
from .audiopackets import flac_seconds, ogg_seconds

__all__ = ["counted_seconds"]

# Bit rates (kbit/s) by (MPEG-1?, layer) and index 1..14; sample rates by version.
_MPEG1_RATES = {1: (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
                2: (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
                3: (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)}
_MPEG2_RATES = {1: (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
                2: (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
                3: (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
#: Resyncs given up after: past this many bytes that are not a frame, the file is not
#: MP3 a decoder would read either (and a Python walk over junk must stay cheap).
_MAX_RESYNCS = 4096


def counted_seconds(data: bytes) -> float | None:
    """Seconds of audio in an MP3, WAV, FLAC, Ogg (Opus, Vorbis) or MP4/M4A (AAC) file,
    counted from its frames, packets or samples; None for other formats, or when none
    is found."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        seconds = _wav_seconds(data)
    elif data[:4] == b"OggS":
        seconds = ogg_seconds(data)
    elif data[4:8] == b"ftyp":
        seconds = mp4_seconds(data)
    else:
        start = _id3_end(data)  # a decoder skips an ID3v2 tag in front of MP3 and FLAC alike
        if data[start:start + 4] == b"fLaC":
            seconds = flac_seconds(data[start:])
        elif data[start:start + 2] in (b"\xff\xfb", b"\xff\xfa", b"\xff\xf3", b"\xff\xf2", b"\xff\xe3") \
                or start:
            seconds = _mp3_seconds(data, start)
        else:
            return None
    return seconds if seconds else None


def _id3_end(data: bytes) -> int:
    """Where the audio starts after an ID3v2 tag (0 without one)."""
    if data[:3] != b"ID3" or len(data) < 10:
        return 0
    size = (data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F)
    return 10 + size + (10 if data[5] & 0x10 else 0)


def _wav_seconds(data: bytes) -> float | None:
    """The bytes after the data chunk's header (to the end of the file, whatever its size
    field says) over the byte rate of the fmt chunk."""
    offset, byte_rate = 12, 0
    while offset + 8 <= len(data):
        kind, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8], "little")
        if kind == b"fmt " and size >= 16:
            byte_rate = int.from_bytes(data[offset + 16:offset + 20], "little")
        elif kind == b"data":
            return (len(data) - offset - 8) / byte_rate if byte_rate > 0 else None
        offset += 8 + size + (size & 1)
    return None


def _mp3_seconds(data: bytes, pos: int) -> float:
    """Every MPEG audio frame a decoder would find from ``pos`` (after an ID3v2 tag); a
    Xing, Info or VBRI frame (a header, silent) is not counted."""
    seconds, resyncs, first = 0.0, 0, True
    end = len(data)
    while pos + 4 <= end:
        frame = _frame(data, pos)
        if frame is None:
            resyncs += 1
            if resyncs > _MAX_RESYNCS:
                break
            nxt = data.find(b"\xff", pos + 1)
            if nxt < 0:
                break
            pos = nxt
            continue
        length, duration = frame
        if not (first and any(tag in data[pos + 4:pos + 40] for tag in (b"Xing", b"Info", b"VBRI"))):
            seconds += duration
        first = False
        pos += length
    return seconds


def _frame(data: bytes, pos: int) -> tuple[int, float] | None:
    """(bytes, seconds) of the MPEG audio frame whose header is at ``pos``, or None."""
    b1, b2 = data[pos + 1], data[pos + 2]
    if data[pos] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version, layer = (b1 >> 3) & 3, 4 - ((b1 >> 1) & 3)  # layer 4: reserved
    rate_index, sample_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version == 1 or layer == 4 or rate_index in (0, 15) or sample_index == 3:
        return None
    mpeg1 = version == 3
    bitrate = (_MPEG1_RATES if mpeg1 else _MPEG2_RATES)[layer][rate_index - 1] * 1000
    sample_rate = _SAMPLE_RATES[version][sample_index]
    if layer == 1:
        return (12 * bitrate // sample_rate + padding) * 4, 384 / sample_rate
    samples = 1152 if mpeg1 or layer == 2 else 576
    return samples // 8 * bitrate // sample_rate + padding, samples / sample_rate
