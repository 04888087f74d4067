"""Multipart uploads (``multipart/form-data``): audio to transcribe, images to edit,
batch input files.

The body is read once (up to ``server.max_upload_bytes``: 413 above) and parsed
in place with ``python-multipart``: text fields are decoded, files are kept as
offsets into the body, never copied. The body goes upstream as the client sent
it (its boundary and all); only a changed text field (the model's upstream
name) is spliced in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiohttp import web
from python_multipart.multipart import MultipartParser, parse_options_header

from .bodies import read_body
from .errors import ProxyError, bad_request

__all__ = ["Upload", "UploadedFile", "parse_upload", "read_upload"]

# python-multipart logs a warning for each malformed body before it raises: the client is
# told what is wrong (400); the operator's log is no place a client may write to at will.
logging.getLogger("python_multipart").setLevel(logging.ERROR)

MAX_FIELD_BYTES = 64 * 1024  # a text field (model, prompt, language...) longer than this is refused


@dataclass(slots=True)
class UploadedFile:
    name: str  # the form field's name, e.g. "file" or "image[]"
    filename: str
    content_type: str
    start: int  # the file's bytes are body[start:end]
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class Upload:
    content_type: str  # the client's Content-Type, boundary included
    fields: dict[str, str] = field(default_factory=dict)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # where each text field's value is
    files: list[UploadedFile] = field(default_factory=list)

    def file(self, *names: str) -> UploadedFile | None:
        for f in self.files:
            if f.name in names:
                return f
        return None

    def missing_file(self, name: str, message: str, code: str) -> ProxyError:
        """400 for the file part ``name`` that is not there, saying how to fix it when it
        came as a text field (a part without a filename)."""
        if name in self.fields:
            message += f" (the part named {name!r} has no filename, so it is read as a text field: give it one)"
        return bad_request(message, name, code)

    def with_field(self, raw: bytes, name: str, value: str) -> bytes:
        """``raw`` with text field ``name``'s value replaced (the upstream's model name)."""
        start, end = self.spans[name]
        return raw[:start] + value.encode() + raw[end:]


async def read_upload(request: web.Request, limit: int) -> tuple[Upload, bytes]:
    """The multipart body, read and parsed; 415 when it is not multipart, 413 over ``limit``."""
    content_type = request.headers.get("Content-Type", "")
    try:
        kind, options = parse_options_header(content_type)
    except UnicodeEncodeError:  # a byte that is not Latin-1 text (aiohttp keeps it as a lone surrogate)
        kind, options = b"", {}
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ProxyError(415, f"this endpoint takes multipart/form-data (a file upload), got "
                              f"{content_type.split(';')[0] or 'no Content-Type'!r}", code="unsupported_media_type")
    raw = await read_body(request, limit, _too_large)
    return parse_upload(raw, content_type), raw


def _too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"the upload is larger than the gateway's limit of {limit} bytes "
                           "(server.max_upload_bytes)", code="upload_too_large")


def parse_upload(raw: bytes, content_type: str) -> Upload:
    """Parse a multipart body in place: 400 when it is malformed."""
    _, options = parse_options_header(content_type)
    upload = Upload(content_type)
    state: dict = {}

    def on_part_begin() -> None:
        state.update(headers={}, start=None, end=None, field=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"] = state["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["start"] is None:
            state["start"] = start
        state["end"] = end

    def on_part_end() -> None:
        disposition, params = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or not name:
            raise bad_request("a part of the multipart body has no Content-Disposition: form-data; name=...",
                              code="invalid_multipart")
        start = state["start"] if state["start"] is not None else 0
        end = state["end"] if state["end"] is not None else start
        if b"filename" in params:
            filename = params[b"filename"].decode("utf-8", "replace")
            if "\0" in filename:  # no file is named so, and a store (PostgreSQL's text) cannot keep it
                raise bad_request(f"the filename of the part {name!r} holds a NUL character", name)
            upload.files.append(UploadedFile(name, filename,
                                             state["headers"].get(b"content-type", b"").decode("latin-1"),
                                             start, end))
            return
        if end - start > MAX_FIELD_BYTES:
            raise bad_request(f"the form field {name!r} is longer than {MAX_FIELD_BYTES} bytes", name)
        if name in upload.fields and not name.endswith("[]"):  # the gateway and the upstream might read different ones
            raise bad_request(f"the form field {name!r} is given twice; give it once", name)
        try:
            upload.fields[name] = raw[start:end].decode()
        except UnicodeDecodeError:
            raise bad_request(f"the form field {name!r} is not UTF-8 text (a file goes in a part with a filename: "
                              f'Content-Disposition: form-data; name="{name}"; filename="...")', name) from None
        if "\0" in upload.fields[name]:  # no model, prompt or option holds one; a store may not keep it
            raise bad_request(f"the form field {name!r} holds a NUL character", name)
        upload.spans[name] = (start, end)

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_end": on_end})
    try:
        parser.write(raw)
        parser.finalize()
    except ProxyError:
        raise
    except Exception as exc:
        raise bad_request(f"the multipart body cannot be read: {exc}", code="invalid_multipart") from None
    if not state.get("ended"):
        raise bad_request("the multipart body ends before its closing boundary", code="invalid_multipart")
    return upload
