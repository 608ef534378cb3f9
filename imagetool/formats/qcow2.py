"""qcow2 header parsing and inspection (versions 2 and 3).

Nothing read from the file is trusted: every offset and length is checked
against the file size and fixed limits before it is used, so a truncated or
hostile file gives CorruptImage instead of a crash, a hang or a huge
allocation. Layout facts come from qemu's docs/interop/qcow2.txt.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from dataclasses import dataclass, field

from imagetool.errors import CorruptImage, FormatError, UnsupportedFeature
from imagetool.formats.detect import QCOW2_MAGIC, ImageInfo, disk_usage
from imagetool.formats.raw import fd_size, pread, reading
from imagetool.fsutil import opened

# Incompatible feature bits.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = 0x1F
# Compatible / autoclear feature bits.
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0

# Header extension types.
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_DATA_FILE = 0x44415441

COMPRESSION_NAMES = {0: "zlib", 1: "zstd"}

V2_HEADER_LEN = 72
V3_HEADER_LEN = 104
MAX_BACKING_NAME = 1023
# qemu refuses L1 tables above 32 MiB; the same bound caps our allocation.
MAX_L1_BYTES = 32 << 20
MAX_SNAPSHOTS = 65536
MAX_BITMAPS = 65535
MAX_BITMAP_DIR = 64 << 20
MAX_EXT_NAME = 4096

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
_V3_TAIL = struct.Struct(">QQQII")
_EXT_HEADER = struct.Struct(">II")
# Byte offset of the virtual size in the header (after magic, version,
# backing_file_offset, backing_file_size, cluster_bits).
_SIZE_OFFSET = struct.calcsize(">4sIQII")
_L1_SIZE_OFFSET = struct.calcsize(">4sIQIIQI")

# L1 and L2 table entries ("Cluster mapping").
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
# A compressed cluster's descriptor: host offset in the low bits, the count
# of extra 512-byte sectors above them (see compressed_size_shift).
L2E_COMPRESSED_MASK = (1 << 62) - 1


def compressed_size_shift(cluster_bits: int) -> int:
    """Bit where a compressed descriptor's sector count starts."""
    return 62 - (cluster_bits - 8)


def compressed_span(entry: int, cluster_bits: int) -> tuple[int, int]:
    """Host bytes ``[start, end)`` of a compressed cluster's descriptor: its
    offset, and the end of the last 512-byte sector it occupies."""
    shift = compressed_size_shift(cluster_bits)
    start = entry & ((1 << shift) - 1)
    nsect = ((entry >> shift) & ((1 << (cluster_bits - 8)) - 1)) + 1
    return start, (start & ~511) + nsect * 512


def refcount_clusters(clusters: int, cluster_size: int) -> tuple[int, int]:
    """(refcount blocks, refcount table clusters) with 16-bit refcounts that
    count ``clusters`` host clusters and themselves."""
    per_block = cluster_size * 8 // 16
    blocks = table = 0
    while True:
        nb = -(-(clusters + blocks + table) // per_block)
        nt = -(-nb * 8 // cluster_size)
        if (nb, nt) == (blocks, table):
            return blocks, table
        blocks, table = nb, nt


def big_endian(table: array) -> array:
    """``table`` converted in place between host order and qcow2's
    big-endian (either way), and returned."""
    if sys.byteorder == "little":
        table.byteswap()
    return table


@dataclass
class Header:
    """The parsed qcow2 header plus what its extensions say."""

    path: str
    file_size: int
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LEN
    compression_type: int = 0
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)
    bitmaps: list[str] = field(default_factory=list)
    # Where the image starts in its file (an image stored inside an OVA's tar).
    base: int = 0

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def virtual_size(self) -> int:
        """The guest size as qemu sees it: the header's size rounded down
        to 512 bytes (qemu counts a disk in 512-byte sectors, so qemu-img
        info, qemu-nbd and ovirt-imageio never show the last partial one)."""
        return self.size // 512 * 512

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    @property
    def l2_bits(self) -> int:
        """log2 of the number of entries in one L2 table."""
        return self.cluster_bits - (4 if self.extended_l2 else 3)

    @property
    def l1_needed(self) -> int:
        """L1 entries needed to map the virtual size."""
        span = 1 << (self.cluster_bits + self.l2_bits)
        return (self.size + span - 1) // span

    def unknown_incompatible(self) -> list[str]:
        """Names (or bit numbers) of incompatible features we do not know."""
        bits = self.incompatible_features & ~INCOMPAT_KNOWN
        return [self.feature_names.get((0, bit), f"bit {bit}")
                for bit in range(64) if bits & (1 << bit)]


def _corrupt(path: str, msg: str) -> CorruptImage:
    return CorruptImage(f"corrupt qcow2 image: {msg}", path)


def read_exact(fd: int, path: str, offset: int, length: int, what: str) -> bytes:
    """Read exactly ``length`` bytes or raise CorruptImage naming ``what``."""
    data = pread(fd, length, offset)
    if len(data) != length:
        raise _corrupt(path, f"{what} at offset {offset} is truncated")
    return data


def parse_header(fd: int, path: str, base: int = 0,
                 length: int | None = None) -> Header:
    """Parse and validate the header and its extensions.

    ``base``/``length``: the image is the byte range ``[base, base+length)``
    of the file (a disk member of a tar); offsets in the image are relative
    to ``base`` and the image ends at ``length``.

    Raises CorruptImage for anything inconsistent and UnsupportedFeature for
    unknown incompatible feature bits (we cannot interpret such a file).
    Encryption, the corrupt bit and external data files are reported, not
    refused: see ``check_readable``.
    """
    file_size = fd_size(fd) - base if length is None else length
    raw = pread(fd, min(V3_HEADER_LEN, max(0, file_size)), base)
    if len(raw) < V2_HEADER_LEN:
        raise _corrupt(path, "file too short for a qcow2 header")
    f = _V2.unpack_from(raw)
    if f[0] != QCOW2_MAGIC:
        raise _corrupt(path, "bad magic")
    h = Header(path, file_size, *f[1:], base=base)
    if h.version not in (2, 3):
        raise UnsupportedFeature(f"qcow2 version {h.version} is not supported", path)
    if not 9 <= h.cluster_bits <= 21:
        raise _corrupt(path, f"cluster_bits {h.cluster_bits} out of range 9..21")
    if h.version == 3:
        if len(raw) < V3_HEADER_LEN:
            raise _corrupt(path, "file too short for a qcow2 v3 header")
        (h.incompatible_features, h.compatible_features, h.autoclear_features,
         h.refcount_order, h.header_length) = _V3_TAIL.unpack_from(raw, V2_HEADER_LEN)
        if h.header_length < V3_HEADER_LEN or h.header_length > h.cluster_size:
            raise _corrupt(path, f"invalid header_length {h.header_length}")
        if h.refcount_order > 6:
            raise _corrupt(path, f"invalid refcount_order {h.refcount_order}")
        if h.header_length > V3_HEADER_LEN:
            h.compression_type = read_exact(fd, path, base + V3_HEADER_LEN, 1,
                                            "compression type")[0]
    _check_geometry(h)
    _read_extensions(fd, h)
    if unknown := h.unknown_incompatible():
        raise UnsupportedFeature(
            "unsupported qcow2 incompatible features: " + ", ".join(unknown), path)
    if h.compression_type not in COMPRESSION_NAMES:
        raise UnsupportedFeature(
            f"unknown compression type {h.compression_type}", path)
    if h.compression_type != 0 and not h.incompatible_features & INCOMPAT_COMPRESSION:
        raise _corrupt(path, "compression type set without its feature bit")
    _read_backing_name(fd, h)
    return h


def _check_geometry(h: Header) -> None:
    path = h.path
    if h.size > (1 << 62):
        raise _corrupt(path, f"virtual size {h.size} too large")
    if h.extended_l2 and h.cluster_bits < 14:
        raise _corrupt(path, "extended L2 needs clusters of at least 16 KiB")
    need = h.l1_needed
    if h.l1_size < need:
        raise _corrupt(path, f"L1 table too small ({h.l1_size} entries, "
                             f"{need} needed for the virtual size)")
    if h.l1_size * 8 > MAX_L1_BYTES:
        raise _corrupt(path, f"L1 table too large ({h.l1_size} entries)")
    if need:
        if h.l1_table_offset == 0 or h.l1_table_offset % h.cluster_size:
            raise _corrupt(path, "invalid L1 table offset")
        if h.l1_table_offset + need * 8 > h.file_size:
            raise _corrupt(path, "L1 table beyond end of file")
    if h.nb_snapshots > MAX_SNAPSHOTS:
        raise _corrupt(path, f"too many snapshots ({h.nb_snapshots})")
    if h.backing_file_offset:
        if h.backing_file_size > MAX_BACKING_NAME or h.backing_file_size == 0:
            raise _corrupt(path, f"backing file name length {h.backing_file_size}")
        if h.backing_file_offset + h.backing_file_size > min(h.cluster_size,
                                                             h.file_size):
            raise _corrupt(path, "backing file name outside the first cluster")


def _read_extensions(fd: int, h: Header) -> None:
    """Walk the header extensions (v3 and v2) inside the first cluster."""
    path = h.path
    start = V2_HEADER_LEN if h.version == 2 else h.header_length
    start = (start + 7) & ~7
    end = min(h.cluster_size, h.file_size)
    if h.backing_file_offset and h.backing_file_offset >= start:
        end = min(end, h.backing_file_offset)
    if start >= end:
        return
    region = pread(fd, end - start, h.base + start)
    pos = 0
    while pos + 8 <= len(region):
        etype, elen = _EXT_HEADER.unpack_from(region, pos)
        pos += 8
        if etype == EXT_END:
            return
        if pos + elen > len(region):
            raise _corrupt(path, f"header extension 0x{etype:08x} too long")
        data = region[pos:pos + elen]
        pos += (elen + 7) & ~7
        if etype == EXT_BACKING_FORMAT:
            h.backing_format = _text(data, path, "backing format")
        elif etype == EXT_DATA_FILE:
            h.data_file = _text(data, path, "data file name")
        elif etype == EXT_FEATURE_NAMES:
            for i in range(len(data) // 48):
                ftype, bit = data[i * 48], data[i * 48 + 1]
                name = data[i * 48 + 2:i * 48 + 48].split(b"\0")[0]
                h.feature_names[(ftype, bit)] = name.decode("utf-8", "replace")
        elif etype == EXT_BITMAPS:
            if h.autoclear_features & AUTOCLEAR_BITMAPS:
                h.bitmaps = _read_bitmap_names(fd, h, data)
    # Running out of room without an end marker: qemu treats it as the end.


def _text(data: bytes, path: str, what: str) -> str:
    if len(data) > MAX_EXT_NAME:
        raise _corrupt(path, f"{what} too long")
    try:
        return data.split(b"\0")[0].decode("utf-8")
    except UnicodeDecodeError as e:
        raise _corrupt(path, f"{what} is not valid UTF-8") from e


def _read_bitmap_names(fd: int, h: Header, ext: bytes) -> list[str]:
    path = h.path
    if len(ext) < 24:
        raise _corrupt(path, "bitmaps extension too short")
    nb, _reserved, dir_size, dir_off = struct.unpack_from(">IIQQ", ext)
    if nb == 0:
        return []
    if nb > MAX_BITMAPS or dir_size > MAX_BITMAP_DIR or dir_size < 24 * nb:
        raise _corrupt(path, "invalid bitmap directory size")
    if dir_off + dir_size > h.file_size:
        raise _corrupt(path, "bitmap directory beyond end of file")
    directory = read_exact(fd, path, h.base + dir_off, dir_size, "bitmap directory")
    names = []
    pos = 0
    for _ in range(nb):
        if pos + 24 > len(directory):
            raise _corrupt(path, "bitmap directory truncated")
        name_size, extra_size = struct.unpack_from(">HI", directory, pos + 18)
        name_at = pos + 24 + extra_size
        if name_at + name_size > len(directory):
            raise _corrupt(path, "bitmap directory entry out of bounds")
        names.append(directory[name_at:name_at + name_size]
                     .decode("utf-8", "replace"))
        pos = (name_at + name_size + 7) & ~7
    return names


def _read_backing_name(fd: int, h: Header) -> None:
    if not h.backing_file_offset:
        return
    data = read_exact(fd, h.path, h.base + h.backing_file_offset, h.backing_file_size,
                      "backing file name")
    try:
        h.backing_file = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _corrupt(h.path, "backing file name is not valid UTF-8") from e
    if "\0" in h.backing_file:
        raise _corrupt(h.path, "backing file name contains NUL")


def pack_header(*, cluster_bits: int, size: int, l1_size: int, l1_table_offset: int,
                refcount_table_offset: int, refcount_table_clusters: int,
                refcount_order: int, backing_file_offset: int = 0,
                backing_file_size: int = 0) -> bytes:
    """A version 3 header of V3_HEADER_LEN bytes: no encryption, snapshots
    or feature bits (what parse_header reads back)."""
    return _V2.pack(QCOW2_MAGIC, 3, backing_file_offset, backing_file_size, cluster_bits,
                    size, 0, l1_size, l1_table_offset, refcount_table_offset,
                    refcount_table_clusters, 0, 0) + _V3_TAIL.pack(
        0, 0, 0, refcount_order, V3_HEADER_LEN)


def pack_extensions(extensions: list[tuple[int, bytes]]) -> bytes:
    """Header extensions (type, data), each padded to 8 bytes, then the end mark."""
    out = b""
    for etype, data in extensions:
        out += _EXT_HEADER.pack(etype, len(data)) + data + bytes(-len(data) % 8)
    return out + _EXT_HEADER.pack(EXT_END, 0)


def grow(path: str | os.PathLike, size: int) -> None:
    """Raise the virtual size of qcow2 ``path`` in place.

    Growing needs no new metadata as long as the L1 table's clusters can map
    the new size: the table takes whole clusters (qemu and this package's
    writer both allocate it so), and the zero entries after its last one
    are free to use by raising ``l1_size``. Beyond that, ValueError (as for
    a file that is not qcow2).
    """
    with opened(path, os.O_RDWR) as fd:
        try:
            h = parse_header(fd, os.fspath(path))
        except FormatError:
            raise ValueError("volume is not a qcow2 image") from None
        per_entry = 1 << (h.cluster_bits + h.l2_bits)
        cs = 1 << h.cluster_bits
        room = -(-h.l1_size * 8 // cs) * cs // 8 if h.l1_table_offset else h.l1_size
        needed = -(-size // per_entry)
        if needed > room:
            raise ValueError(f"cannot grow qcow2 volume beyond {room * per_entry} bytes "
                             "in place")
        if needed > h.l1_size:
            tail = pread(fd, (needed - h.l1_size) * 8, h.l1_table_offset + h.l1_size * 8)
            if len(tail) != (needed - h.l1_size) * 8 or tail.count(0) != len(tail):
                raise ValueError("cannot grow qcow2 volume in place: the L1 table's "
                                 "cluster holds other data")
            os.pwrite(fd, needed.to_bytes(4, "big"), _L1_SIZE_OFFSET)
        os.pwrite(fd, size.to_bytes(8, "big"), _SIZE_OFFSET)


def check_readable(h: Header) -> None:
    """Refuse images whose guest data we must not or cannot read."""
    if h.incompatible_features & INCOMPAT_CORRUPT:
        raise CorruptImage("image is marked corrupt (run qemu-img check -r all)",
                           h.path)
    if h.crypt_method:
        kind = {1: "AES", 2: "LUKS"}.get(h.crypt_method, str(h.crypt_method))
        raise UnsupportedFeature(
            f"encrypted qcow2 ({kind}) is not supported", h.path)
    if h.incompatible_features & INCOMPAT_DATA_FILE or h.data_file:
        raise UnsupportedFeature(
            "qcow2 with an external data file is not supported", h.path)


def read_header(path: str | os.PathLike) -> Header:
    path = os.fspath(path)
    with reading(path) as fd:
        return parse_header(fd, path)


def inspect(path: str | os.PathLike) -> ImageInfo:
    """ImageInfo of a qcow2 file; encryption etc. are reported, not refused."""
    path = os.fspath(path)
    h = read_header(path)
    return header_info(h, disk_usage(path), lazy_refcounts=bool(
        h.compatible_features & COMPAT_LAZY_REFCOUNTS))


def header_info(h: Header, actual_size: int, **more) -> ImageInfo:
    """The ImageInfo of the image ``h`` heads; ``more``: further fields."""
    return ImageInfo(
        format="qcow2", virtual_size=h.virtual_size, actual_size=actual_size,
        filename=h.path, version=h.version,
        compat="0.10" if h.version == 2 else "1.1",
        cluster_size=h.cluster_size, refcount_bits=1 << h.refcount_order,
        compression_type=COMPRESSION_NAMES[h.compression_type],
        extended_l2=h.extended_l2, backing_file=h.backing_file,
        backing_file_format=h.backing_format, encrypted=h.crypt_method != 0,
        data_file=h.data_file,
        dirty=bool(h.incompatible_features & INCOMPAT_DIRTY),
        corrupt=bool(h.incompatible_features & INCOMPAT_CORRUPT),
        snapshots=h.nb_snapshots, bitmaps=list(h.bitmaps), **more)
