"""What a local image file is: format detection and the ImageInfo record.

Detection looks only at magic numbers (and, for a VMDK descriptor file,
its text): each format of the registry (``imagetool.formats.registry``)
says whether the first bytes are its own, in the order they were
registered. Formats we recognise but do not handle are refused with
UnsupportedFormat naming the format and the qemu-img command that converts
them to something we do handle.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import asdict, dataclass, field

from imagetool.errors import FormatError, UnsupportedFormat
from imagetool.formats import registry
from imagetool.formats.raw import fd_size, pread, reading

QCOW2_MAGIC = b"QFI\xfb"
ISO_MAGIC = b"\x01CD001\x01\x00"
ISO_OFFSET = 0x8000

_VDI_MAGIC = 0xBEDA107F
_VDI_TEXT = b"<<< Oracle VM VirtualBox Disk Image >>>"


@dataclass
class ImageInfo:
    """What ``imagetool info`` reports about one image file.

    ``subformat`` is a VMDK's createType (None for other formats); the
    fields after it are qcow2 details and stay None for raw files.
    """

    format: str
    virtual_size: int
    actual_size: int
    content_type: str = "data"
    filename: str = ""
    subformat: str | None = None
    # qcow2 only
    version: int | None = None
    compat: str | None = None
    cluster_size: int | None = None
    refcount_bits: int | None = None
    compression_type: str | None = None
    extended_l2: bool | None = None
    backing_file: str | None = None
    backing_file_format: str | None = None
    encrypted: bool | None = None
    data_file: str | None = None
    dirty: bool | None = None
    corrupt: bool | None = None
    lazy_refcounts: bool | None = None
    snapshots: int | None = None
    bitmaps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON for ``imagetool info --json`` (qcow2 keys only for qcow2,
        ``subformat`` only for vmdk)."""
        d = asdict(self)
        if self.format != "vmdk":
            del d["subformat"]
        if self.format != "qcow2":
            keep = ("format", "virtual_size", "actual_size", "content_type",
                    "filename", "subformat")
            d = {k: d[k] for k in keep if k in d}
        return d


def probe(path: str | os.PathLike) -> tuple[str, str]:
    """Return ``(format, content_type)``: a registered format
    (``imagetool.formats.registry``: raw, qcow2, vmdk) and "data" or "iso".

    Raises UnsupportedFormat for vhd, vhdx, vdi, qed, VMware 3 (COWD) and
    LUKS, and FormatError if the file cannot be opened.
    """
    path = os.fspath(path)
    with reading(path) as fd:
        try:
            size = fd_size(fd)
            head = pread(fd, 512, 0)
            tail = pread(fd, 512, size - 512) if size >= 512 else b""
            iso = pread(fd, len(ISO_MAGIC), ISO_OFFSET)
        except OSError as e:  # a directory, an I/O error
            raise FormatError(f"cannot read: {e.strerror}", path) from e
    name = sniff(head, tail, path)
    if name is not None:
        return name, "data"
    return registry.fallback(), "iso" if iso == ISO_MAGIC else "data"


def sniff(head: bytes, tail: bytes, path: str, *, in_file: bool = False) -> str | None:
    """The registered format the first and last 512 bytes of an image say,
    None for what no magic claims (raw); UnsupportedFormat for the formats
    recognised but not read. ``in_file``: the image is a byte range of
    ``path`` (an OVA member), so no conversion of ``path`` is suggested."""
    name = registry.recognise(head, path)
    if name is not None:
        return name
    foreign = _foreign_format(head, tail)
    if foreign and in_file:
        raise UnsupportedFormat(f"{foreign} images are not supported", path)
    if foreign == "luks":
        raise UnsupportedFormat(
            "LUKS encrypted image: encrypted images are not supported", path)
    if foreign:
        raise UnsupportedFormat(
            f"{foreign} images are not supported; convert it first: "
            f"qemu-img convert -O qcow2 {path} out.qcow2", path)
    return None


def qcow2_magic(head: bytes, path: str) -> bool:
    """qcow2's magic; UnsupportedFormat for a version other than 2 and 3."""
    if head[:4] != QCOW2_MAGIC:
        return False
    if len(head) >= 8:
        version = struct.unpack(">I", head[4:8])[0]
        if version not in (2, 3):
            raise UnsupportedFormat(
                f"qcow2 version {version} is not supported (only 2 and 3)", path)
    return True


def vmdk_magic(head: bytes, path: str) -> bool:
    """A hosted sparse extent (KDMV) or a text descriptor."""
    return head[:4] == b"KDMV" or is_vmdk_descriptor(head)


def disk_usage(path: str) -> int:
    """Bytes ``path`` takes on disk (its length where blocks are not counted)."""
    st = os.stat(path)
    blocks = getattr(st, "st_blocks", None)
    return blocks * 512 if blocks is not None else st.st_size


def is_vmdk_descriptor(head: bytes) -> bool:
    """A text descriptor: its usual comment, or text with a createType line."""
    if head.lstrip().startswith(b"# Disk DescriptorFile"):
        return True
    text = head.split(b"\0", 1)[0]
    if not text or any(b < 9 or 13 < b < 32 for b in text):
        return False
    return re.search(rb'(?m)^\s*createType\s*=', text) is not None


def detect(path: str | os.PathLike) -> str:
    """A registered format's name; refuse other known formats (UnsupportedFormat)."""
    return probe(path)[0]


def _foreign_format(head: bytes, tail: bytes) -> str | None:
    """Name of a recognised but unsupported format, or None."""
    if head.startswith(b"LUKS\xba\xbe"):
        return "luks"
    if head.startswith(b"COWD"):
        return "VMware 3 (COWD) vmdk"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix") or tail.startswith(b"conectix"):
        return "vhd"
    if head.startswith(_VDI_TEXT) or (
            len(head) >= 0x44
            and struct.unpack("<I", head[0x40:0x44])[0] == _VDI_MAGIC):
        return "vdi"
    if head.startswith(b"QED\x00"):
        return "qed"
    return None
