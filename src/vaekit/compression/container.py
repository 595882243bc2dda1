"""The .vkz file: a fixed preamble, a JSON header, the coded words, and a SHA-256 of everything
before it.

    8 bytes   magic b"VKZ\\x00\\r\\n\\x1a\\n"
    4 bytes   format version (uint32, little-endian)
    4 bytes   header length H (uint32, little-endian)
    H bytes   header: UTF-8 JSON (the model's hash, the data's shape, dtype and count, names and
              image modes for folders, the coder's settings, each chain's word count, the rates
              and a SHA-256 of the decoded data)
    P bytes   payload: the chains' words, uint32 little-endian, chain after chain
    32 bytes  SHA-256 of all the bytes above

Any truncation or changed byte fails the checksum (or the magic, or the version) before any
decoding starts.
"""

from __future__ import annotations

import hashlib
import json
import struct

from vaekit.errors import VaekitError

MAGIC = b"VKZ\x00\r\n\x1a\n"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<II")
DIGEST = 32


def pack(header: dict, payload: bytes) -> bytes:
    text = json.dumps({**header, "payload_bytes": len(payload)}, separators=(",", ":")).encode("utf-8")
    body = MAGIC + _PREAMBLE.pack(FORMAT_VERSION, len(text)) + text + payload
    return body + hashlib.sha256(body).digest()


def unpack(blob: bytes, name: str = "compressed data") -> tuple[dict, bytes]:
    """(header, payload), or a one-line error naming ``name``: not a .vkz file, a newer format,
    truncated or damaged."""
    blob = bytes(blob)
    if not blob.startswith(MAGIC[:4]) or (len(blob) >= len(MAGIC) and not blob.startswith(MAGIC)):
        raise VaekitError(f"{name}: not a vaekit compressed file (bad magic bytes)")
    start = len(MAGIC) + _PREAMBLE.size
    if len(blob) < start + DIGEST:
        raise VaekitError(f"{name}: truncated ({len(blob)} bytes)")
    version, size = _PREAMBLE.unpack_from(blob, len(MAGIC))
    if version > FORMAT_VERSION:
        raise VaekitError(f"{name}: written in compressed format {version}, newer than this vaekit reads "
                          f"({FORMAT_VERSION}); upgrade vaekit")
    if version < 1:
        raise VaekitError(f"{name}: unknown compressed format version {version}")
    body, digest = blob[:-DIGEST], blob[-DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise VaekitError(f"{name}: damaged or truncated (checksum mismatch)")
    try:
        header = json.loads(body[start : start + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VaekitError(f"{name}: damaged header") from None
    payload = body[start + size :]
    if not isinstance(header, dict) or header.get("payload_bytes") != len(payload):
        raise VaekitError(f"{name}: damaged (payload length does not match the header)")
    return header, payload
