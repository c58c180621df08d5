"""Read a GGUF file's key/value metadata with `struct` (no numpy, no gguf package): the tokenizer
fixtures read llama.cpp's vocabularies with it, the export tests the files they write."""
from __future__ import annotations

import struct
from pathlib import Path

from trainer.errors import UserError

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict[str, object]:
    """Return the key/value metadata of a little-endian GGUF file (tensors are not read).

    `gguf.GGUFReader` takes about 20 s on this 6 MB vocabulary because it wraps every string in numpy views;
    walking the format with `struct` takes well under a second.
    """
    data = Path(path).read_bytes()
    fix = "point at a GGUF file from llama.cpp; if it came from the cache, delete the cache folder to unpack it again"
    if data[:4] != b"GGUF":
        raise UserError("not a GGUF file", where=str(path), fix=fix)
    (version,) = struct.unpack_from("<I", data, 4)
    if version not in (2, 3):  # v1 used 32-bit counts; a byte-swapped (big-endian) file shows a huge number
        raise UserError(f"unsupported GGUF version {version}", where=str(path), fix=fix)
    (n_kv,) = struct.unpack_from("<Q", data, 16)
    pos = 24  # after magic, version, tensor count and key/value count

    def take(fmt: str) -> tuple:
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal pos
        (size,) = take("<Q")
        pos += size
        return data[pos - size:pos].decode("utf-8")

    def value(kind: int) -> object:
        if kind == _GGUF_STRING:
            return string()
        if kind == _GGUF_ARRAY:
            item_kind, count = take("<IQ")
            if item_kind in _GGUF_SCALARS:  # one unpack for the whole array
                return list(take(f"<{count}{_GGUF_SCALARS[item_kind]}"))
            return [value(item_kind) for _ in range(count)]
        return take("<" + _GGUF_SCALARS[kind])[0]

    metadata = {}
    for _ in range(n_kv):
        key = string()
        metadata[key] = value(take("<I")[0])
    return metadata
