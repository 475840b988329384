"""Cheap checks that a file holds all the voxel data its header promises.

Needed because the common readers do not tell: SimpleITK reads a truncated ``.nii`` or
``.nii.gz`` without complaint (the missing voxels become zeros) and nibabel's ``load``
reads only the header. Each check compares byte counts from the header with the bytes on
disk; a gzip stream is decompressed in chunks and counted, never held in memory.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tifffile

_CHUNK = 1 << 20
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"

_META_ITEM_SIZE = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_FLOAT": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_DOUBLE": 8,
}


class IncompleteError(Exception):
    """The file is shorter than its header says, or its compressed stream is broken."""


# Decompressed bytes tolerated beyond what a header declares (NIfTI extensions, padding).
GZIP_SLACK = 1 << 20


def gzip_size(path: Path, offset: int = 0, expected: int | None = None) -> int:
    """Bytes the gzip stream in ``path`` (from byte ``offset``) decompresses to.

    Decompresses 1 MiB at a time; raises ``IncompleteError`` when the stream ends early, is
    corrupt or fails its CRC, or (given the ``expected`` size) expands more than
    ``GZIP_SLACK`` past it: a small file of a small image that inflates to gigabytes
    (a decompression bomb) is refused without inflating it all.
    """
    total = 0
    limit = None if expected is None else expected + GZIP_SLACK
    with path.open("rb") as raw:
        raw.seek(offset)
        try:
            with gzip.GzipFile(fileobj=raw) as stream:
                while chunk := stream.read(_CHUNK):
                    total += len(chunk)
                    if limit is not None and total > limit:
                        raise IncompleteError(
                            f"compressed data expands past {limit} bytes where the header "
                            f"declares {expected}; refused"
                        )
        except EOFError:
            raise IncompleteError(
                f"compressed data ends early (after {total} bytes): file truncated"
            ) from None
        except (gzip.BadGzipFile, zlib.error) as error:
            raise IncompleteError(f"compressed data corrupt ({error})") from error
    return total


def _require(available: int, expected: int, what: str) -> None:
    if available < expected:
        raise IncompleteError(
            f"{what} holds {available} bytes, header says {expected}: file truncated"
        )


def check_nifti_complete(image: Any) -> None:
    """Raise ``IncompleteError`` unless the data file of nibabel ``image`` holds every voxel.

    Works for NIfTI-1/2 single files and Analyze/NIfTI pairs, compressed or not.
    """
    proxy = image.dataobj
    data_file = Path(image.file_map["image"].filename)
    expected = proxy.offset + math.prod(proxy.shape) * proxy.dtype.itemsize
    if data_file.name.lower().endswith(".gz"):
        _require(gzip_size(data_file, expected=expected), expected, "decompressed data")
    else:
        _require(data_file.stat().st_size, expected, "file")


def _check_tiff_directories(path: Path, file_size: int) -> None:
    """Follow the chain of TIFF directories (pages) and raise ``IncompleteError`` when one
    lies past the end of the file; tifffile only logs that and reads the pages before it."""
    with path.open("rb") as handle:
        head = handle.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            return  # not a TIFF header; tifffile has said so already
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        count_format, entry_size, offset_format = ("Q", 20, "Q") if big else ("H", 12, "I")
        count_size, offset_size = struct.calcsize(count_format), struct.calcsize(offset_format)
        offset = struct.unpack(order + offset_format, head[8:16] if big else head[4:8])[0]
        seen = set()
        while offset and offset not in seen:
            seen.add(offset)
            if offset + count_size > file_size:
                break
            handle.seek(offset)
            count = struct.unpack(order + count_format, handle.read(count_size))[0]
            link = offset + count_size + count * entry_size
            if link + offset_size > file_size:
                break
            handle.seek(link)
            offset = struct.unpack(order + offset_format, handle.read(offset_size))[0]
        else:
            return
    raise IncompleteError(
        f"TIFF page directory at byte {offset} lies past the end ({file_size} bytes): "
        "file truncated"
    )


def check_tiff_complete(tif: tifffile.TiffFile, path: Path) -> None:
    """Raise ``IncompleteError`` when a page directory, strip or tile lies past the file's
    end."""
    file_size = path.stat().st_size
    _check_tiff_directories(path, file_size)
    for index, page in enumerate(tif.pages):
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)]
        if ends and max(ends) > file_size:
            raise IncompleteError(
                f"page {index} needs {max(ends)} bytes, file has {file_size}: file truncated"
            )


def check_bitmap_complete(path: Path) -> None:
    """Raise ``IncompleteError`` for a PNG or JPEG cut short.

    The end marker (PNG ``IEND``, JPEG ``EOI``) is checked first; only a file without it is
    decoded, which tells a truncated file from one with bytes after its marker.
    """
    from PIL import Image

    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 64))
        tail = handle.read().rstrip(b"\x00")
    if tail.endswith(_PNG_END) or tail.endswith(_JPEG_END):
        return
    try:
        with Image.open(path) as image:
            image.load()
    except OSError as error:
        raise IncompleteError(f"image data incomplete ({error})") from error


def _header_fields(lines: Iterator[bytes], separator: bytes) -> dict[str, str]:
    fields = {}
    for line in lines:
        key, found, value = line.partition(separator)
        if found:
            fields[key.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return fields


def _metaimage_expected(path: Path) -> tuple[Path, int, int, bool] | None:
    """(data file, data offset, expected bytes, compressed) of a MetaImage, None if unknown."""
    offset = 0
    lines = []
    with path.open("rb") as handle:
        for line in handle:
            offset += len(line)
            lines.append(line)
            if line.split(b"=")[0].strip() == b"ElementDataFile":
                break
    fields = _header_fields(iter(lines), b"=")
    data_name = fields.get("elementdatafile", "")
    item_size = _META_ITEM_SIZE.get(fields.get("elementtype", "").upper())
    if not data_name or data_name.upper().startswith("LIST") or "%" in data_name:
        return None
    local = data_name.upper() == "LOCAL"
    data_file = path if local else path.parent / data_name
    if not local:
        offset = max(0, int(fields.get("headersize", "0")))
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if compressed:
        size = fields.get("compresseddatasize")
        return (data_file, offset, int(size), True) if size else None
    if item_size is None:
        return None
    voxels = math.prod(int(s) for s in fields.get("dimsize", "0").split())
    channels = int(fields.get("elementnumberofchannels", "1"))
    return data_file, offset, voxels * channels * item_size, False


def _nrrd_item_size(type_name: str) -> int | None:
    name = type_name.lower()
    rules: tuple[tuple[int, tuple[str, ...]], ...] = (
        (8, ("64", "long long", "longlong", "double")),
        (1, ("8", "char")),
        (2, ("16", "short")),
        (4, ("32", "int", "float")),
    )
    for size, marks in rules:
        if any(mark in name for mark in marks):
            return size
    return None


def _nrrd_expected(path: Path) -> tuple[Path, int, int, str] | None:
    """(data file, data offset, expected decoded bytes, encoding) of a NRRD, None if unknown."""
    offset = 0
    lines = []
    with path.open("rb") as handle:
        for line in handle:
            offset += len(line)
            if not line.strip():
                break
            lines.append(line)
    fields = _header_fields((line for line in lines if not line.startswith(b"#")), b":")
    item_size = _nrrd_item_size(fields.get("type", ""))
    encoding = fields.get("encoding", "raw").lower()
    if item_size is None or encoding not in ("raw", "gzip", "gz") or "byte skip" in fields:
        return None
    data_name = fields.get("data file") or fields.get("datafile")
    if data_name:
        if data_name.upper().startswith("LIST") or " " in data_name:
            return None
        path, offset = path.parent / data_name, 0
    voxels = math.prod(int(s) for s in fields.get("sizes", "0").split())
    return path, offset, voxels * item_size, encoding


def check_itk_complete(path: Path) -> None:
    """Raise ``IncompleteError`` for a MetaImage (``.mha``/``.mhd``) or NRRD
    (``.nrrd``/``.nhdr``) whose data is shorter than its header says.

    Formats, encodings and data-file schemes this does not model (bzip2, file lists,
    byte skips) pass unchecked.
    """
    suffix = path.suffix.lower()
    if suffix in (".mha", ".mhd"):
        meta = _metaimage_expected(path)
        if meta is not None:
            data_file, offset, expected, _ = meta
            _require(data_file.stat().st_size - offset, expected, str(data_file.name))
    elif suffix in (".nrrd", ".nhdr"):
        nrrd = _nrrd_expected(path)
        if nrrd is not None:
            data_file, offset, expected, encoding = nrrd
            if encoding == "raw":
                _require(data_file.stat().st_size - offset, expected, str(data_file.name))
            else:
                decompressed = gzip_size(data_file, offset, expected=expected)
                _require(decompressed, expected, "decompressed data")
