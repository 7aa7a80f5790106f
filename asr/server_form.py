"""The form of an `asr serve` request, parsed in memory.

A `multipart/form-data` body (what OpenAI's clients, curl `-F` and browsers send) or an
`application/x-www-form-urlencoded` one, already held whole in memory by the server's body cap,
is split into its fields by python-multipart's parser. Nothing is written to disk, whatever
the size: Starlette's own form parser spools file parts over 1 MB to a temporary file.

The audio part is an `Upload` (its bytes and the file name the client gave, if any), whether or
not the client gave a file name: `curl -F 'file=<clip.wav'` and Node's form-data send the
recording as a plain field. Every other field is text.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import FormData

__all__ = ["Upload", "FormError", "parse_form", "BINARY_FIELDS"]

BINARY_FIELDS = ("file",)  # fields kept as bytes even when sent without a file name


class FormError(ValueError):
    """A body that is not a well-formed form; the message says why, in one line."""


@dataclass(frozen=True)
class Upload:
    """A file part: its bytes, the file name the client gave (None when it gave none) and the
    part's Content-Type."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None


def parse_form(body: bytes, content_type: str, max_fields: int = 32, max_files: int = 1) -> FormData:
    """The fields of a form body: a FormData of str values, and `Upload`s for parts with a file
    name or named in BINARY_FIELDS. Raises FormError for a body that is not a form, a malformed
    one, or one with more than `max_fields` fields or `max_files` file parts."""
    kind, params = parse_options_header(content_type)
    if kind == b"application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=max_fields, strict_parsing=False)
        except ValueError as e:
            raise FormError(str(e)) from None
        return FormData([_item(k.decode("utf-8", "replace"), None, None, v) for k, v in pairs])
    if kind != b"multipart/form-data":
        raise FormError(f"expected a multipart/form-data body, got Content-Type {content_type or 'none'!r}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormError("no boundary in the multipart Content-Type")
    return _Multipart(boundary, max_fields, max_files).parse(body)


def _item(name: str, filename: str | None, part_type: str | None, data: bytes) -> tuple[str, str | Upload]:
    if filename is not None or name in BINARY_FIELDS:
        return name, Upload(data, filename, part_type)
    return name, data.decode("utf-8", "replace")


class _Multipart:
    """python-multipart's callbacks, collecting each part's headers and bytes."""

    def __init__(self, boundary: bytes, max_fields: int, max_files: int):
        self.boundary, self.max_fields, self.max_files = boundary, max_fields, max_files
        self.items: list[tuple[str, str | Upload]] = []
        self.files = 0
        self.header_name = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.data: list[bytes] = []
        self.ended = False

    def parse(self, body: bytes) -> FormData:
        callbacks = {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_end": self.on_end,
        }
        try:
            parser = MultipartParser(self.boundary, callbacks)  # type: ignore[arg-type]
            parser.write(body)
            parser.finalize()
        except FormParserError as e:
            raise FormError(f"malformed multipart body ({e})") from None
        if not self.ended:
            raise FormError("malformed multipart body (no closing boundary)")
        return FormData(self.items)

    def on_part_begin(self) -> None:
        self.headers, self.data = {}, []

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.lower()] = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.data.append(data[start:end])

    def on_part_end(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise FormError('a multipart part without a name (Content-Disposition: form-data; name="...")')
        filename = options[b"filename"].decode("utf-8", "replace") if b"filename" in options else None
        if filename is not None:
            self.files += 1
            if self.files > self.max_files:
                raise FormError(f"too many files: at most {self.max_files}")
        if len(self.items) >= self.max_fields:
            raise FormError(f"too many fields: at most {self.max_fields}")
        part_type = self.headers.get(b"content-type")
        self.items.append(_item(options[b"name"].decode("utf-8", "replace"), filename, part_type.decode("latin-1") if part_type else None, b"".join(self.data)))

    def on_end(self) -> None:
        self.ended = True
