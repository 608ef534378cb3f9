"""The pure-Python VMDK reader, judged against qemu-img.

Images are made by ``qemu-img convert -O vmdk -o subformat=...`` from raw
files with data, holes and runs of written zeros; the reader must give the
bytes ``qemu-img convert -O raw`` gives, extents consistent with them, and
a clear error for each kind of malformed file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import threading

import pytest

from helpers import KiB, MiB, make_raw, qemu_img, qemu_info, qemu_raw_bytes
from imagetool.checksum import checksum, checksum_file
from imagetool.errors import CorruptImage, FormatError, UnsupportedFeature, UnsupportedFormat
from imagetool.formats import detect, inspect, open_image
from imagetool.iocore.backend import Extent
from imagetool.formats.convert import convert
from imagetool.formats.vmdk import open_vmdk

SUBFORMATS = ["streamOptimized", "monolithicSparse", "monolithicFlat",
              "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"]
# Not a multiple of the 64 KiB grain; data, a hole, written zeros, data
# straddling grains, a partial last grain.
SIZE = 5 * MiB + 4608
DATA = [(0, 100 * KiB), (1 * MiB + 512, 3000), (2 * MiB - 4096, 70 * KiB),
        (5 * MiB, 4608)]
ZERO_RUN = (3 * MiB, 300 * KiB)


def _make_src(path) -> bytes:
    make_raw(path, SIZE, DATA, seed=7)
    with open(path, "r+b") as f:            # allocated zeros
        f.seek(ZERO_RUN[0])
        f.write(bytes(ZERO_RUN[1]))
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("vmdk")
    src = d / "src.raw"
    data = _make_src(src)
    out = {"dir": d, "src": src, "data": data}
    for sub in SUBFORMATS:
        p = d / f"{sub}.vmdk"
        qemu_img("convert", "-O", "vmdk", "-o", f"subformat={sub}", str(src), str(p))
        out[sub] = p
    return out


def _copy_image(images, sub, dest):
    """Copy a (possibly multi-file) image into ``dest``; return the main path."""
    dest.mkdir(exist_ok=True)
    for name in os.listdir(images["dir"]):
        if name.startswith(sub):
            shutil.copy(images["dir"] / name, dest / name)
    return dest / f"{sub}.vmdk"


def _read_all(backend) -> bytes:
    buf = bytearray(backend.size)
    assert backend.read_into(0, memoryview(buf)) == backend.size
    return bytes(buf)


def _check_extents(exts, data: bytes) -> None:
    """Extents tile [0, size); zero extents read zero; data covers every non-zero."""
    pos = 0
    for e in exts:
        assert e.start == pos and e.length > 0
        if e.zero:
            assert data[e.start:e.end].count(0) == e.length, e
        pos = e.end
    assert pos == len(data)


# --- each subformat against qemu ------------------------------------------

@pytest.mark.parametrize("sub", SUBFORMATS)
def test_reads_as_qemu(images, tmp_path, sub):
    path = images[sub]
    expected = qemu_raw_bytes(path, tmp_path)
    assert expected == images["data"]
    assert detect(path) == "vmdk"
    with open_image(path) as b:
        assert b.size == SIZE
        got = _read_all(b)
        exts = list(b.extents())
        # an unaligned read across a grain boundary and the partial last grain
        assert b.read(64 * KiB - 100, 300) == expected[64 * KiB - 100:64 * KiB + 200]
        assert b.read(SIZE - 1000, 5000) == expected[SIZE - 1000:]
        assert b.read(SIZE, 10) == b""
    assert got == expected
    _check_extents(exts, got)
    # the hole and the run of written zeros are not data
    data_ranges = [(e.start, e.end) for e in exts if not e.zero]
    for a, z in [(1200 * KiB, 1900 * KiB), (3 * MiB, 3 * MiB + 256 * KiB)]:
        assert all(z <= s or a >= t for s, t in data_ranges), (a, z, data_ranges)
    holes = [e for e in exts if e.hole]
    assert holes and all(e.zero for e in holes)


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_info(images, sub):
    path = images[sub]
    info = inspect(path)
    q = qemu_info(path)
    assert (info.format, info.subformat) == ("vmdk", sub)
    assert info.virtual_size == q["virtual-size"] == SIZE
    assert info.actual_size == q["actual-size"]
    assert info.to_dict() == {"format": "vmdk", "virtual_size": SIZE,
                              "actual_size": q["actual-size"],
                              "content_type": "data", "filename": str(path),
                              "subformat": sub}


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_checksum_and_convert(images, tmp_path, sub):
    path = images[sub]
    assert checksum_file(path) == checksum_file(images["src"])
    for fmt in ("qcow2", "raw"):
        out = tmp_path / f"out.{fmt}"
        convert(path, out, fmt)
        p = subprocess.run(
            ["qemu-img", "compare", "-f", "vmdk", "-F", fmt, str(path), str(out)],
            capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


def test_cli_info_checksum_convert(images, tmp_path, capsys):
    from imagetool.cli.main import main

    def run(*argv):
        code = 0
        try:
            main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return (code, *capsys.readouterr())

    path = images["streamOptimized"]
    code, out, err = run("info", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert "file format: vmdk" in lines and "subformat: streamOptimized" in lines
    assert any(ln.startswith("virtual size:") and ln.endswith(f"({SIZE} bytes)")
               for ln in lines)
    code, out, err = run("info", "--json", str(path))
    assert code == 0 and json.loads(out)["subformat"] == "streamOptimized"
    code, out, err = run("checksum", "--json", str(path))
    assert code == 0, err
    assert json.loads(out)["checksum"] == checksum_file(images["src"])["checksum"]
    dst = tmp_path / "c.qcow2"
    code, out, err = run("convert", str(path), str(dst), "-O", "qcow2")
    assert code == 0, err
    assert qemu_raw_bytes(dst, tmp_path) == images["data"]


def test_zeroed_grains(tmp_path):
    """GTE 1 with the zeroed-grain flag: zeros that are not a hole (as qemu-img map)."""
    p = tmp_path / "zg.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", str(p), "1M")
    from helpers import qemu_io
    qemu_io(p, "write -P 5 0 128k", "write -z 64k 64k", fmt="vmdk")
    with open_image(p) as b:
        assert list(b.extents()) == [
            Extent(0, 64 * KiB), Extent(64 * KiB, 64 * KiB, zero=True),
            Extent(128 * KiB, 896 * KiB, zero=True, hole=True)]
        assert _read_all(b) == qemu_raw_bytes(p, tmp_path)


def _stream_with_footer(src: bytes) -> bytes:
    """qemu's stream file made VMware-style: GD_AT_END in the header, footer at the end."""
    data = bytearray(src)
    header = bytes(data[:512])
    struct.pack_into("<Q", data, 56, 0xFFFFFFFFFFFFFFFF)
    assert data[-512:] == bytes(512)        # qemu's EOS marker
    footer_marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\0")
    return bytes(data) + footer_marker + header + bytes(512)


def test_stream_with_footer(images, tmp_path):
    p = tmp_path / "vmware.vmdk"
    p.write_bytes(_stream_with_footer(images["streamOptimized"].read_bytes()))
    assert qemu_raw_bytes(p, tmp_path) == images["data"]
    with open_image(p) as b:
        assert _read_all(b) == images["data"]
    # no footer behind a GD_AT_END header
    bad = bytearray(p.read_bytes())
    bad[-1024:-1020] = b"XXXX"
    p.write_bytes(bytes(bad))
    with pytest.raises(CorruptImage) as e:
        open_image(p)
    assert str(e.value) == (f"{p}: corrupt vmdk image: grain directory is at "
                            f"the end of the stream but there is no footer")


@pytest.mark.parametrize("sub", ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
@pytest.mark.slow
def test_two_gb_split_over_2gib(tmp_path, sub):
    size = 2 * 1024 * MiB + 3 * MiB + 512
    ranges = [(0, 64 * KiB), (2 * 1024 * MiB - 5000, 10000), (size - 4096, 4096)]
    src = tmp_path / "big.raw"
    with open(src, "wb") as f:
        f.truncate(size)
        for i, (start, length) in enumerate(ranges):
            f.seek(start)
            f.write(bytes([i + 1]) * length)
    p = tmp_path / f"{sub}.vmdk"
    qemu_img("convert", "-O", "vmdk", "-o", f"subformat={sub}", str(src), str(p))
    assert len([n for n in os.listdir(tmp_path) if n.startswith(sub + "-")]) == 2
    info = inspect(p)
    assert (info.subformat, info.virtual_size) == (sub, size)
    with open_image(p) as b, open(src, "rb") as f:
        for start, length in ranges:
            a, t = max(0, start - 100), min(size, start + length + 100)
            f.seek(a)
            assert b.read(a, t - a) == f.read(t - a)
        data = [e for e in b.extents() if not e.zero]
        assert sum(e.length for e in data) < 2 * MiB
        assert checksum(b) == checksum_file(src)


# --- a VMDK inside another file -------------------------------------------

def test_window_inside_tar(images, tmp_path):
    tar = tmp_path / "disk.ova"
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        ovf = b"<Envelope/>" * 100
        info = tarfile.TarInfo("disk.ovf")
        info.size = len(ovf)
        t.addfile(info, io.BytesIO(ovf))
        t.add(images["streamOptimized"], "disk1.vmdk")
        t.add(images["monolithicSparse"], "disk2.vmdk")
    with tarfile.open(tar) as t:
        members = {m.name: m for m in t.getmembers()}
    for name, sub in (("disk1.vmdk", "streamOptimized"),
                      ("disk2.vmdk", "monolithicSparse")):
        m = members[name]
        assert m.offset_data > 0
        with open_image(tar, offset=m.offset_data, length=m.size) as b:
            assert _read_all(b) == images["data"]
            clone = b.clone()
            try:
                assert clone.read(0, 4096) == images["data"][:4096]
            finally:
                clone.close()
        info = inspect(tar, offset=m.offset_data, length=m.size)
        assert (info.format, info.subformat, info.virtual_size,
                info.actual_size) == ("vmdk", sub, SIZE, m.size)
        with open_vmdk(tar, offset=m.offset_data, length=m.size,
                       name=f"disk.ova:{name}") as b:
            assert b.read(0, 100) == images["data"][:100]
    # A window cut short: the grains past its end are refused, not read from
    # whatever follows in the tar.
    m = members["disk2.vmdk"]
    with open_image(tar, offset=m.offset_data, length=200 * KiB) as b:
        with pytest.raises(CorruptImage, match=r"grain \d+ at sector \d+ is past "
                           r"the end of the file \(204800 bytes\)"):
            _read_all(b)
    with pytest.raises(FormatError) as e:
        open_image(tar, offset=m.offset_data, length=os.path.getsize(tar))
    assert "past the end of the file" in str(e.value)
    # Other formats are read from a byte range too; the tar header there is
    # no qcow2 image, and writing into a range is refused.
    with pytest.raises(CorruptImage, match="bad magic"):
        open_image(tar, format="qcow2", offset=512)
    with pytest.raises(UnsupportedFeature, match="read-only"):
        open_image(tar, "r+", offset=512)


def test_descriptor_file_not_opened_from_window(images, tmp_path):
    p = tmp_path / "pad.bin"
    desc = images["monolithicFlat"].read_bytes()
    p.write_bytes(bytes(512) + desc)
    with pytest.raises(UnsupportedFeature) as e:
        open_image(p, offset=512)
    assert str(e.value) == (f"{p}[512:{512 + len(desc)}]: a vmdk descriptor with "
                            f"separate extent files can only be opened as a "
                            f"plain file")


# --- malformed files --------------------------------------------------------

def _sparse_layout(data: bytes):
    gd_sector = struct.unpack_from("<Q", data, 56)[0]
    gt_sector = struct.unpack_from("<I", data, gd_sector * 512)[0]
    gte0 = struct.unpack_from("<I", data, gt_sector * 512)[0]
    return gd_sector, gt_sector, gte0


def _mutated(images, tmp_path, sub, fn):
    p = tmp_path / f"bad-{sub}.vmdk"
    data = bytearray(images[sub].read_bytes())
    fn(data)
    p.write_bytes(bytes(data))
    return p


def _error(path, exc=CorruptImage) -> str:
    with pytest.raises(exc) as e:
        with open_image(path) as b:
            list(b.extents())
            _read_all(b)
    return str(e.value)


def test_bad_grain_directory(images, tmp_path):
    p = _mutated(images, tmp_path, "monolithicSparse",
                 lambda d: struct.pack_into("<Q", d, 56, 0x7FFFFFFF))
    size = p.stat().st_size
    assert _error(p) == (f"{p}: corrupt vmdk image: grain directory at sector "
                         f"{0x7FFFFFFF} is past the end of the file ({size} bytes)")

    def bad_gde(d):
        gd, _, _ = _sparse_layout(bytes(d))
        struct.pack_into("<I", d, gd * 512, 0xFFFFFF00)
    p = _mutated(images, tmp_path, "monolithicSparse", bad_gde)
    assert _error(p) == (f"{p}: corrupt vmdk image: grain table 0 at sector "
                         f"{0xFFFFFF00} is past the end of the file ({size} bytes)")


def test_grain_past_the_end(images, tmp_path):
    def bad_gte(d):
        _, gt, _ = _sparse_layout(bytes(d))
        struct.pack_into("<I", d, gt * 512, 100000)
    for sub in ("monolithicSparse", "streamOptimized"):
        p = _mutated(images, tmp_path, sub, bad_gte)
        size = p.stat().st_size
        assert _error(p) == (f"{p}: corrupt vmdk image: grain 0 at sector 100000 "
                             f"is past the end of the file ({size} bytes)")


def test_bad_deflate_stream(images, tmp_path):
    def garble(d):
        _, _, gte = _sparse_layout(bytes(d))
        d[gte * 512 + 12:gte * 512 + 40] = b"\xff" * 28
    p = _mutated(images, tmp_path, "streamOptimized", garble)
    gte = _sparse_layout(p.read_bytes())[2]
    msg = _error(p)
    assert msg.startswith(f"{p}: corrupt vmdk image: grain 0 at offset "
                          f"{gte * 512}: bad deflate stream (Error -3 ")

    def wrong_lba(d):
        _, _, gte = _sparse_layout(bytes(d))
        struct.pack_into("<Q", d, gte * 512, 999)
    p = _mutated(images, tmp_path, "streamOptimized", wrong_lba)
    assert _error(p) == (f"{p}: corrupt vmdk image: grain 0 at offset "
                         f"{gte * 512}: marker says sector 999, expected 0")

    def huge_size(d):
        _, _, gte = _sparse_layout(bytes(d))
        struct.pack_into("<I", d, gte * 512 + 8, 0xFFFFFFFF)
    p = _mutated(images, tmp_path, "streamOptimized", huge_size)
    assert _error(p) == (f"{p}: corrupt vmdk image: grain 0 at offset "
                         f"{gte * 512}: compressed size {0xFFFFFFFF} exceeds "
                         f"{2 * 65536 + 4096} bytes")


@pytest.mark.parametrize("field,value,message", [
    (20, 3, "grain size 3 sectors is not a power of two from 1 to 2048"),
    (20, 1 << 20, f"grain size {1 << 20} sectors is not a power of two from 1 to 2048"),
    (44, 100000, "100000 entries per grain table (expected 1 to 512)"),
    (12, 1 << 60, f"capacity {1 << 60} sectors is too large"),
])
def test_bad_header_fields(images, tmp_path, field, value, message):
    p = _mutated(images, tmp_path, "monolithicSparse",
                 lambda d: struct.pack_into("<Q" if field != 44 else "<I",
                                            d, field, value))
    assert _error(p) == f"{p}: corrupt vmdk image: {message}"


def test_truncated_and_unknown_version(images, tmp_path):
    p = tmp_path / "short.vmdk"
    p.write_bytes(b"KDMV" + bytes(100))
    assert _error(p) == f"{p}: corrupt vmdk image: file too short for a vmdk header (104 bytes)"
    p = _mutated(images, tmp_path, "monolithicSparse",
                 lambda d: struct.pack_into("<I", d, 4, 9))
    assert _error(p, UnsupportedFeature) == (
        f"{p}: vmdk sparse extent version 9 is not supported (only 1, 2 and 3)")


def _descriptor(images, tmp_path, sub, edit):
    path = _copy_image(images, sub, tmp_path / "img")
    text = path.read_bytes().split(b"\0")[0].decode()
    path.write_text(edit(text))
    return path


@pytest.mark.parametrize("name", ["../outside.raw", "/etc/hostname",
                                  "sub/inner.raw", ".."])
def test_extent_names_outside_directory_refused(images, tmp_path, name):
    (tmp_path / "outside.raw").write_bytes(bytes(3 * MiB))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "sub").mkdir()
    (tmp_path / "img" / "sub" / "inner.raw").write_bytes(bytes(3 * MiB))
    path = _descriptor(images, tmp_path, "monolithicFlat",
                       lambda t: t.replace('"monolithicFlat-flat.vmdk"', f'"{name}"'))
    for call in (open_image, inspect):
        with pytest.raises(CorruptImage) as e:
            call(path)
        assert str(e.value) == (f"{path}: corrupt vmdk descriptor: extent file "
                                f"{name!r} is not in the descriptor's directory")


def test_descriptor_errors(images, tmp_path):
    path = _descriptor(images, tmp_path, "monolithicFlat",
                       lambda t: t.replace("RW 10249 FLAT", "RW 99999 FLAT"))
    assert _error(path) == (f"{path}: corrupt vmdk image: extent file "
                            f"monolithicFlat-flat.vmdk is {SIZE} bytes, the "
                            f"descriptor declares {99999 * 512}")
    path = _descriptor(images, tmp_path, "twoGbMaxExtentSparse",
                       lambda t: t.replace("RW 10249 SPARSE", "RW 20000 SPARSE"))
    assert _error(path) == (f"{path}: corrupt vmdk image: extent "
                            f"twoGbMaxExtentSparse-s001.vmdk holds {SIZE} bytes, "
                            f"the descriptor declares {20000 * 512}")
    path = _descriptor(images, tmp_path, "monolithicFlat",
                       lambda t: t.replace("RW 10249 FLAT", "RW 10249 VMFSSPARSE"))
    assert _error(path, UnsupportedFeature) == (
        f"{path}: vmdk extent type VMFSSPARSE is not supported (FLAT, SPARSE "
        f"and ZERO are)")
    path = _descriptor(images, tmp_path, "monolithicFlat",
                       lambda t: t.replace("parentCID=ffffffff", "parentCID=12345678"))
    assert _error(path, UnsupportedFeature) == (
        f"{path}: vmdk delta disk with a parent is not supported; convert the "
        f"chain first: qemu-img convert -O qcow2 {path} out.qcow2")
    path = _descriptor(images, tmp_path, "monolithicFlat",
                       lambda t: t.replace("RW 10249 FLAT", "# no extent"))
    assert _error(path) == f"{path}: corrupt vmdk descriptor: no extents"
    # a SPARSE extent that is not a sparse extent file
    path = _descriptor(images, tmp_path, "monolithicFlat",
                       lambda t: t.replace("RW 10249 FLAT", "RW 10249 SPARSE")
                       .replace(" 0\n", "\n"))
    extent = path.parent / "monolithicFlat-flat.vmdk"
    assert _error(path) == (f"{extent}: corrupt vmdk image: header: bad magic "
                            f"{images['data'][:4]!r} (expected KDMV)")


def test_fifo_extent_refused(images, tmp_path):
    path = _descriptor(images, tmp_path, "monolithicFlat", lambda t: t)
    flat = path.parent / "monolithicFlat-flat.vmdk"
    flat.unlink()
    os.mkfifo(flat)
    assert stat.S_ISFIFO(os.stat(flat).st_mode)
    assert _error(path, UnsupportedFeature) == (
        f"{path}: extent file 'monolithicFlat-flat.vmdk' is not a regular file")


def test_zero_extent_and_missing_file(images, tmp_path):
    path = _descriptor(images, tmp_path, "monolithicFlat",
                       lambda t: t.replace('RW 10249 FLAT "monolithicFlat-flat.vmdk" 0',
                                           'RW 2048 FLAT "monolithicFlat-flat.vmdk" 0\n'
                                           'RW 8201 ZERO'))
    with open_image(path) as b:
        assert _read_all(b) == images["data"][:MiB] + bytes(SIZE - MiB)
        assert list(b.extents())[-1] == Extent(MiB, SIZE - MiB, zero=True, hole=True)
    path.parent.joinpath("monolithicFlat-flat.vmdk").unlink()
    assert _error(path, FormatError) == (
        f"{path}: extent file 'monolithicFlat-flat.vmdk': No such file or directory")


def test_cowd_and_other_formats_refused(tmp_path):
    p = tmp_path / "old.vmdk"
    p.write_bytes(b"COWD" + bytes(2044))
    with pytest.raises(UnsupportedFormat) as e:
        open_image(p)
    assert str(e.value) == (f"{p}: VMware 3 (COWD) vmdk images are not supported; "
                            f"convert it first: qemu-img convert -O qcow2 {p} out.qcow2")
    for name, fmt in (("vhd", "vpc"), ("vhdx", "vhdx"), ("vdi", "vdi"), ("qed", "qed")):
        q = tmp_path / f"d.{name}"
        qemu_img("create", "-q", "-f", fmt, str(q), "1M")
        with pytest.raises(UnsupportedFormat, match="qemu-img convert -O qcow2"):
            open_image(q)


def test_read_only(images):
    with open_image(images["streamOptimized"]) as b:
        with pytest.raises(UnsupportedFeature, match="read-only"):
            b.write(0, b"x")
        with pytest.raises(UnsupportedFeature, match="read-only"):
            b.zero(0, 512)
    with pytest.raises(UnsupportedFeature, match="read-only"):
        open_image(images["streamOptimized"], "r+")


# --- threads ------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["streamOptimized", "twoGbMaxExtentFlat"])
def test_threads_shared_and_clones(images, sub):
    """Several threads on one backend and on clones read the right bytes."""
    expected = images["data"]
    errors = []
    with open_image(images[sub]) as shared:
        def worker(i, backend):
            try:
                for j in range(40):
                    off = ((i * 7919 + j * 104729) * 512) % (SIZE - 200 * KiB)
                    got = backend.read(off, 150 * KiB)
                    if got != expected[off:off + 150 * KiB]:
                        errors.append((i, off))
            except Exception as e:        # reported below
                errors.append(repr(e))
        clones = [shared.clone() for _ in range(3)]
        threads = [threading.Thread(target=worker, args=(i, b))
                   for i, b in enumerate([shared, shared, shared] + clones)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in clones:
            c.close()
        assert shared.read(0, 10) == expected[:10]     # clones closed, not shared
    assert errors == []


# --- upload to the local engine ----------------------------------------------

@pytest.fixture(scope="module")
def engine_conn(tmp_path_factory):
    from imagetool.engine import Connection
    from imagetool.server.local import LocalEngine

    d = tmp_path_factory.mktemp("vmdk-engine")
    with LocalEngine(os.path.join(d, "engine")) as eng:
        with Connection(eng.url, username=eng.username, password=eng.password,
                        cafile=eng.cafile) as c:
            yield c


@pytest.mark.parametrize("sub,kw,disk_format", [
    ("streamOptimized", {}, "cow"),
    ("monolithicFlat", {"disk_format": "raw"}, "raw"),
    ("twoGbMaxExtentSparse", {"transfer_format": "cow"}, "cow"),
])
@pytest.mark.slow
def test_upload_to_local_engine(images, tmp_path, engine_conn, sub, kw, disk_format):
    """Guest data goes up (raw transfer, or converted to qcow2 for a cow
    transfer) and the disk's checksum equals the source's."""
    from imagetool.transfer.download import download_disk
    from imagetool.transfer.upload import upload_disk_result
    from imagetool.transfer.disk_checksum import disk_checksum

    result = upload_disk_result(engine_conn, images[sub], "data", workers=3, **kw)
    disk = result.disk
    assert (disk.status, disk.format, disk.provisioned_size) == ("ok", disk_format, SIZE)
    v = result.verification
    assert v.verified
    if kw.get("transfer_format") == "cow":     # the temporary qcow2's bytes
        assert v.scope == "volume-bytes"
    else:
        assert v.scope == "guest-data"
        assert v.value == checksum_file(images["src"], algorithm=v.algorithm,
                                        block_size=v.block_size)["checksum"]
    assert (disk_checksum(engine_conn, disk.id)["checksum"]
            == checksum_file(images["src"])["checksum"])
    out = tmp_path / "back.raw"
    download_disk(engine_conn, disk, str(out), format="raw")
    assert out.read_bytes() == images["data"]


def test_cli_upload(images, clean_env, cli):
    code, out, err = cli("upload", images["streamOptimized"], "--sd", "data", "--json")
    assert code == 0, err
    obj = json.loads(out)
    obj = obj[0] if isinstance(obj, list) else obj
    assert obj["format"] == "cow" and obj["name"] == "streamOptimized.vmdk"
    c = obj["checksum"]
    assert obj["verified"] is True and c["scope"] == "guest-data"
    assert c["value"] == checksum_file(images["src"], algorithm=c["algorithm"],
                                       block_size=c["block_size"])["checksum"]
