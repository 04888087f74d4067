"""Audio files made byte by byte for the tests: FLAC, Ogg Opus, Ogg Vorbis and M4A (AAC)
of a given length, each with an optional header that claims another (``claimed``).

FLAC and Opus are whole files a decoder plays (FLAC frames of VERBATIM 8-bit samples;
Opus packets of 20 ms CELT). The Vorbis file has real identification and mode fields
and a setup header whose codebooks are filler, and the M4A real boxes around filler
AAC frames: the gateway counts frames and packets from those fields, as a decoder does,
without decoding them. Every file holds more than a byte per millisecond of audio (the
most the gateway believes an upload holds)."""

from __future__ import annotations

import struct

__all__ = ["flac", "m4a", "ogg_opus", "ogg_speex", "ogg_vorbis"]


def _table(poly: int, width: int) -> list[int]:
    top, mask, out = 1 << (width - 1), (1 << width) - 1, []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
        out.append(crc)
    return out


_CRC8, _CRC16, _CRC32 = _table(0x07, 8), _table(0x8005, 16), _table(0x04C11DB7, 32)


def _crc(data: bytes, table: list[int], width: int) -> int:
    crc, shift, mask = 0, width - 8, (1 << width) - 1
    for byte in data:
        crc = ((crc << 8) & mask) ^ table[((crc >> shift) ^ byte) & 0xFF]
    return crc


def _noise(n: int, seed: int = 1) -> bytes:
    """Low, varied 8-bit samples (-3..3): never 0xFF (no false FLAC sync codes)."""
    return bytes((((i * 7 + seed) * 13) % 7 - 3) & 0xFF for i in range(n))


# -- FLAC -----------------------------------------------------------------------------------

def _utf8(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    assert n < 0x800
    return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])


def flac(seconds: float, claimed: float | None = None, rate: int = 8000, block: int = 4096) -> bytes:
    """Mono 8-bit FLAC at 8 kHz; STREAMINFO's sample count says ``claimed`` seconds."""
    samples = round(seconds * rate)
    total = samples if claimed is None else round(claimed * rate)
    info = struct.pack(">HH", block, block) + b"\0" * 6
    info += (rate << 44 | 0 << 41 | 7 << 36 | total).to_bytes(8, "big") + b"\0" * 16
    out = bytearray(b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info)
    for n, start in enumerate(range(0, samples, block)):
        size = min(block, samples - start)
        head = bytes([0xFF, 0xF8, (12 if size == block else 7) << 4 | 4, 0x02]) + _utf8(n)
        if size != block:
            head += (size - 1).to_bytes(2, "big")
        frame = head + bytes([_crc(head, _CRC8, 8)]) + b"\x02" + _noise(size, n)
        out += frame + _crc(frame, _CRC16, 16).to_bytes(2, "big")
    return bytes(out)


# -- Ogg ------------------------------------------------------------------------------------

def _pages(packets: list[bytes], granules: list[int], serial: int = 0x7011) -> bytes:
    """One page per packet (each under 255 segments), with its granule position."""
    out = bytearray()
    for seq, (packet, granule) in enumerate(zip(packets, granules, strict=True)):
        lacing = [255] * (len(packet) // 255) + [len(packet) % 255]
        flags = 2 if seq == 0 else 4 if seq == len(packets) - 1 else 0
        page = bytearray(b"OggS" + bytes([0, flags]) + struct.pack("<qII", granule, serial, seq) + b"\0\0\0\0"
                         + bytes([len(lacing)]) + bytes(lacing) + packet)
        page[22:26] = _crc(bytes(page), _CRC32, 32).to_bytes(4, "little")
        out += page
    return bytes(out)


def ogg_opus(seconds: float, claimed: float | None = None) -> bytes:
    """Mono Opus of 20 ms CELT packets (48 bytes each); the last granule says ``claimed``."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 7) + b"tollway" + struct.pack("<I", 0)
    count = round(seconds / 0.02)
    audio = [b"\xf8" + bytes((i * 31 + k * 17) & 0x7F for k in range(47)) for i in range(count)]
    granules = [0, 0] + [312 + 960 * (i + 1) for i in range(count)]
    if claimed is not None:
        granules[-1] = 312 + round(claimed * 48000)
    return _pages([head, tags, *audio], granules)


class _Bits:
    """Bits packed as Vorbis packs them: the first bit is a byte's lowest."""

    def __init__(self) -> None:
        self.value, self.size = 0, 0

    def put(self, value: int, width: int) -> None:
        self.value |= value << self.size
        self.size += width

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.size + 7) // 8, "little")


def ogg_vorbis(seconds: float, claimed: float | None = None, rate: int = 8000) -> bytes:
    """Mono Vorbis at 8 kHz with two modes (short 256, long 2048 blocks) and long-block
    packets only (1024 samples each, 160 bytes); the last granule says ``claimed``."""
    ident = b"\x01vorbis" + struct.pack("<IBIiiiB", 0, 1, rate, 0, 16000, 0, 0xB8) + b"\x01"
    comment = b"\x03vorbis" + struct.pack("<I", 7) + b"tollway" + struct.pack("<I", 0) + b"\x01"
    bits = _Bits()
    bits.put(0, 64)  # filler where the codebooks, floors, residues and mappings go
    bits.put(1, 6)  # two modes
    for blockflag in (0, 1):
        bits.put(blockflag, 1)
        bits.put(0, 32)  # window type, transform type
        bits.put(0, 8)  # mapping
    bits.put(1, 1)  # framing bit
    setup = b"\x05vorbis" + bits.bytes()
    count = round(seconds * rate / 1024) + 1  # the first packet makes no samples
    audio = [b"\x02" + bytes((i + k) & 0x7F for k in range(159)) for i in range(count)]
    granules = [0, 0, 0] + [1024 * i for i in range(count)]
    if claimed is not None:
        granules[-1] = round(claimed * rate)
    return _pages([ident, comment, setup, *audio], granules)


# -- M4A ------------------------------------------------------------------------------------

def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _descriptor(tag: int, body: bytes) -> bytes:
    return bytes([tag, len(body)]) + body


def m4a(seconds: float, claimed: float | None = None, rate: int = 8000, frame_bytes: int = 160) -> bytes:
    """AAC-LC mono at 8 kHz in an M4A: 1024 samples a frame; ``mdhd`` and ``stts`` say ``claimed``."""
    count = round(seconds * rate / 1024)
    said = count if claimed is None else max(1, round(claimed * rate / 1024))
    config = (2 << 11 | 11 << 7 | 1 << 3).to_bytes(2, "big")  # AAC LC, 8000 Hz, mono
    esds = _box(b"esds", b"\0\0\0\0", _descriptor(3, b"\0\0\0" + _descriptor(
        4, bytes([0x40, 0x15]) + b"\0\x01\0" + struct.pack(">II", 16000, 16000) + _descriptor(5, config))
        + _descriptor(6, b"\x02")))
    mp4a = _box(b"mp4a", b"\0" * 6, struct.pack(">H", 1), b"\0" * 8, struct.pack(">HHHHI", 1, 16, 0, 0, rate << 16),
                esds)
    ftyp = _box(b"ftyp", b"M4A ", b"\0\0\0\0", b"M4A isom")

    def moov(offset: int) -> bytes:
        stbl = _box(b"stbl", _box(b"stsd", b"\0\0\0\0", struct.pack(">I", 1), mp4a),
                    _box(b"stts", b"\0\0\0\0", struct.pack(">III", 1, count, 1024 * said // count)),
                    _box(b"stsc", b"\0\0\0\0", struct.pack(">IIII", 1, 1, count, 1)),
                    _box(b"stsz", b"\0\0\0\0", struct.pack(">II", frame_bytes, count)),
                    _box(b"stco", b"\0\0\0\0", struct.pack(">II", 1, offset)))
        mdhd = _box(b"mdhd", b"\0\0\0\0", struct.pack(">IIIIHH", 0, 0, rate, 1024 * said, 0x55C4, 0))
        hdlr = _box(b"hdlr", b"\0\0\0\0", b"\0\0\0\0", b"soun", b"\0" * 12, b"sound\0")
        mvhd = _box(b"mvhd", b"\0\0\0\0", struct.pack(">IIII", 0, 0, rate, 1024 * said), b"\0\x01\0\0\x01\0",
                    b"\0" * 10, struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000), b"\0" * 24,
                    struct.pack(">I", 2))
        tkhd = _box(b"tkhd", b"\0\0\0\x07", struct.pack(">IIIII", 0, 0, 1, 0, 1024 * said), b"\0" * 8,
                    struct.pack(">hhhH", 0, 0, 0x0100, 0), struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0,
                                                                    0x40000000), b"\0" * 8)
        minf = _box(b"minf", _box(b"smhd", b"\0" * 8), stbl)
        return _box(b"moov", mvhd, _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf)))

    size = len(moov(0))
    mdat = _box(b"mdat", *(bytes([0x21, 0x10]) + bytes((i + k) & 0x3F for k in range(frame_bytes - 2))
                           for i in range(count)))
    return ftyp + moov(len(ftyp) + size + 8) + mdat


def ogg_speex(seconds: float, rate: int = 8000) -> bytes:
    """An Ogg Speex file (a codec the gateway does not count) whose header says ``seconds``."""
    head = bytearray(b"Speex   " + b"1.2".ljust(20, b"\0") + b"\0" * 52)
    head[36:40], head[48:52] = struct.pack("<I", rate), struct.pack("<I", 1)
    frames = [bytes((i + k) & 0x7F for k in range(38)) for i in range(round(seconds / 0.02))]
    return _pages([bytes(head), b"\0" * 8, *frames], [0, 0] + [160 * (i + 1) for i in range(len(frames))])
