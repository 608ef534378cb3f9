"""The data-plane client and ``imagetool url`` against a misbehaving imageio server.

Every reply is checked before its bytes are used: a wrong range, a wrong
length, extents that do not tile the image, malformed OPTIONS or checksum
replies are one clear line (exit 1), never a traceback and never a file
left under the final name. Flipped bytes are caught by verification when
the server offers checksum.
"""

from __future__ import annotations

import json
import os

import pytest

from bad_imageio_server import BadImageioServer
from imagetool.errors import ChecksumMismatch, ConnectionFailed, ProtocolError
from imagetool.imageio.client import ImageioClient

# Every test here starts engines or CLI processes: out of the quick loop.
pytestmark = pytest.mark.slow

SIZE = 64 * 1024
DATA = bytes((i * 7 + 3) % 251 for i in range(SIZE))
FEATURES_NO_CHECKSUM = ("extents", "flush", "zero")


def _client(srv: BadImageioServer) -> ImageioClient:
    return ImageioClient(srv.url, read_timeout=10)


# --- the library client ------------------------------------------------------

RANGE_CASES = {
    "range-shifted": "imageio GET range 0-8191: server sent Content-Range "
                     "'bytes 4096-12287/65536', expected 'bytes 0-8191/65536'",
    "range-label": "imageio GET range 0-8191: server sent Content-Range "
                   "'bytes 4096-12287/65536', expected 'bytes 0-8191/65536'",
    "range-total": "imageio GET range 0-8191: server sent Content-Range "
                   "'bytes 0-8191/131072', expected 'bytes 0-8191/65536'",
    "range-missing": "imageio GET range 0-8191: server sent no Content-Range, "
                     "expected 'bytes 0-8191/65536'",
    "content-length": "imageio GET range 0-8191: server sent Content-Length '8191', "
                      "expected 8192",
}


@pytest.mark.parametrize("fault", sorted(RANGE_CASES))
def test_read_checks_the_reply_is_the_range_asked_for(fault):
    with BadImageioServer(DATA, fault=fault) as srv, _client(srv) as c:
        assert c.size() == SIZE
        buf = bytearray(8192)
        with pytest.raises(ProtocolError) as e:
            c.read_into(0, memoryview(buf))
    assert str(e.value) == RANGE_CASES[fault]
    assert buf == bytearray(8192)          # nothing taken from the bad reply


def test_read_short_body_is_a_connection_failure():
    with BadImageioServer(DATA, fault="short-body") as srv, _client(srv) as c:
        c.size()
        with pytest.raises(ConnectionFailed) as e:
            c.read_into(0, memoryview(bytearray(8192)))
    assert str(e.value).endswith(": range 0-8191: short reply (4096 of 8192 bytes)")


EXTENT_CASES = {
    "gap": "extent 1 starting at 8192 after one ending at 4096 (a gap)",
    "overlap": "extent 1 starting at 4096 after one ending at 8192 (an overlap)",
    "negative": "extent 1 with length -4096, expected > 0",
    "dict": '{"start": 0, "length": 65536, "zero": false}, expected a list of extents',
    "null": "null, expected a list of extents",
    "no-length": "extent 0 {\"start\": 0, \"zero\": false, \"hole\": false} without 'length'",
    "str-length": 'extent 0 length "65536", expected an integer',
    "bool-start": "extent 0 start false, expected an integer",
    "str-zero": 'extent 0 zero "no", expected a boolean',
    "unsorted": "extent 0 starting at 4096, expected 0",
}


@pytest.mark.parametrize("kind", sorted(EXTENT_CASES))
def test_malformed_extents_are_one_line(kind):
    with BadImageioServer(DATA, fault=f"extents-{kind}") as srv, _client(srv) as c:
        with pytest.raises(ProtocolError) as e:
            c.extents()
    assert str(e.value) == f"imageio GET extents zero: server sent {EXTENT_CASES[kind]}"


def test_extents_past_a_known_size():
    with BadImageioServer(DATA) as srv, _client(srv) as c:
        assert c.size() == SIZE
        srv.fault = "extents-past-end"
        with pytest.raises(ProtocolError) as e:
            c.extents()
    assert str(e.value) == ("imageio GET extents zero: server sent extent 0 ending at "
                            "69632, past the image size 65536")


def test_extents_short_of_a_known_size():
    with BadImageioServer(DATA[:8192]) as small, _client(small) as c:
        assert c.size() == 8192
        c._size = SIZE              # as a clone of a client of a larger image
        with pytest.raises(ProtocolError) as e:
            c.extents()
    assert str(e.value) == ("imageio GET extents zero: server sent extents ending at "
                            "8192, short of the image size 65536")


OPTIONS_CASES = {
    "lots": 'max_readers "lots", expected a positive integer',
    "negative": "max_writers -1, expected a positive integer",
    "bool": "max_readers true, expected a positive integer",
    "list": '["checksum"], expected a JSON object',
    "features-str": 'features "checksum", expected a list of names',
}


@pytest.mark.parametrize("kind", sorted(OPTIONS_CASES))
def test_malformed_options_are_one_line(kind):
    with BadImageioServer(DATA, fault=f"options-{kind}") as srv, _client(srv) as c:
        with pytest.raises(ProtocolError) as e:
            c.options()
    assert str(e.value) == f"imageio OPTIONS: server sent {OPTIONS_CASES[kind]}"


CHECKSUM_CASES = {
    "missing": '{"algorithm": "blake2b", "block_size": 4194304}',
    "number": '{"algorithm": "blake2b", "block_size": 4194304, "checksum": 42}',
    "list": '["deadbeef"]',
}


@pytest.mark.parametrize("kind", sorted(CHECKSUM_CASES))
def test_malformed_checksum_is_one_line(kind):
    with BadImageioServer(DATA, fault=f"checksum-{kind}") as srv, _client(srv) as c:
        with pytest.raises(ProtocolError) as e:
            c.checksum()
    assert str(e.value) == (f"imageio GET checksum: server sent {CHECKSUM_CASES[kind]}, "
                            'expected an object with a hex "checksum"')


def test_library_download_with_flipped_bytes_raises_and_leaves_no_file(tmp_path):
    from imagetool.transfer.urls import download_url
    out = tmp_path / "out.raw"
    with BadImageioServer(DATA, fault="flip") as srv:
        with pytest.raises(ChecksumMismatch):
            download_url(srv.url, out)
    assert os.listdir(tmp_path) == []


# --- imagetool url download / upload -------------------------------------------

def _error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


DOWNLOAD_CASES = {
    "range-shifted": (1, "imagetool: error: reading source failed at offset 0 length "
                         "65536: imageio GET range 0-65535: server sent Content-Range "
                         "'bytes 4096-69631/65536', expected 'bytes 0-65535/65536'"),
    "range-label": (1, "imagetool: error: reading source failed at offset 0 length "
                       "65536: imageio GET range 0-65535: server sent Content-Range "
                       "'bytes 4096-69631/65536', expected 'bytes 0-65535/65536'"),
    "content-length": (1, "imagetool: error: reading source failed at offset 0 length "
                          "65536: imageio GET range 0-65535: server sent Content-Length "
                          "'65535', expected 65536"),
    "short-body": (3, None),
    "extents-gap": (1, "imagetool: error: imageio GET extents zero: server sent "
                       "extent 1 starting at 8192 after one ending at 4096 (a gap)"),
    "extents-negative": (1, "imagetool: error: imageio GET extents zero: server sent "
                            "extent 1 with length -4096, expected > 0"),
    "extents-null": (1, "imagetool: error: imageio GET extents zero: server sent null, "
                        "expected a list of extents"),
    "extents-dict": (1, "imagetool: error: imageio GET extents zero: server sent "
                        '{"start": 0, "length": 65536, "zero": false}, '
                        "expected a list of extents"),
    "extents-no-length": (1, "imagetool: error: imageio GET extents zero: server sent "
                             'extent 0 {"start": 0, "zero": false, "hole": false} '
                             "without 'length'"),
    # The extents make the image longer than it is; the data reply says so.
    "extents-past-end": (1, "imagetool: error: reading source failed at offset 0 length "
                            "69632: imageio GET range 0-69631: server sent Content-Range "
                            "'bytes 0-65535/65536', expected 'bytes 0-69631/69632'"),
    "options-lots": (1, 'imagetool: error: imageio OPTIONS: server sent max_readers '
                        '"lots", expected a positive integer'),
    "options-negative": (1, "imagetool: error: imageio OPTIONS: server sent max_writers "
                            "-1, expected a positive integer"),
    "options-bool": (1, "imagetool: error: imageio OPTIONS: server sent max_readers true, "
                        "expected a positive integer"),
}


@pytest.mark.parametrize("fault", sorted(DOWNLOAD_CASES))
def test_url_download_from_a_bad_server(cli, tmp_path, fault):
    code_expected, line = DOWNLOAD_CASES[fault]
    out = tmp_path / "out.raw"
    with BadImageioServer(DATA, fault=fault) as srv:
        code, stdout, err = cli("url", "download", srv.url, out, "--json")
    got = _error_line(err)
    assert code == code_expected, err
    if line is None:        # a connection cut inside the body: transient, exit 3
        assert got.startswith("imagetool: error: reading source failed at offset 0 "
                              "length 65536: imageio GET 127.0.0.1:")
        assert got.endswith(": range 0-65535: short reply (32768 of 65536 bytes)")
    else:
        assert got == line
    assert stdout == ""
    assert os.listdir(tmp_path) == []      # no final file, no temporary left


def _checksum_line(err: str, what: str) -> tuple[str, str]:
    line = _error_line(err)
    prefix = f"imagetool: error: {what} ("
    assert line.startswith(prefix), line
    _, _, values = line.partition("checksum mismatch: local ")
    local, sep, remote = values.partition(" != remote ")
    assert sep and len(local) == len(remote) == 64 and local != remote, line
    return local, remote


def test_url_download_flipped_bytes_with_checksum_fails(cli, tmp_path):
    out = tmp_path / "out.raw"
    with BadImageioServer(DATA, fault="flip") as srv:
        code, stdout, err = cli("url", "download", srv.url, out, "--json")
    assert code == 1
    _checksum_line(err, str(out))
    assert stdout == "" and os.listdir(tmp_path) == []


def test_url_download_flipped_bytes_without_checksum_says_not_verified(cli, tmp_path):
    out = tmp_path / "out.raw"
    with BadImageioServer(DATA, fault="flip", features=FEATURES_NO_CHECKSUM) as srv:
        code, stdout, err = cli("url", "download", srv.url, out, "--json")
    assert (code, err) == (0, "")
    result = json.loads(stdout)
    assert result["verified"] is False
    assert result["verify_skipped"] == "the server does not offer checksum"
    assert out.read_bytes() != DATA          # nothing could tell


def test_url_download_verifies_by_default(cli, tmp_path):
    out = tmp_path / "out.raw"
    with BadImageioServer(DATA) as srv:
        code, stdout, err = cli("url", "download", srv.url, out, "--json")
        assert (code, err) == (0, "")
        assert json.loads(stdout)["verified"] is True
        assert out.read_bytes() == DATA
        out.unlink()
        code, stdout, err = cli("url", "download", srv.url, out, "--json", "--no-verify")
    assert (code, err) == (0, "")
    assert json.loads(stdout)["verified"] is False
    assert out.read_bytes() == DATA


def test_url_download_no_verify_keeps_flipped_bytes(cli, tmp_path):
    out = tmp_path / "out.raw"
    with BadImageioServer(DATA, fault="flip") as srv:
        code, stdout, err = cli("url", "download", srv.url, out, "--json", "--no-verify")
    assert (code, err) == (0, "")
    assert json.loads(stdout)["verified"] is False
    assert out.read_bytes()[1:] == DATA[1:]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "disk.raw"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


def test_url_upload_verifies_by_default(cli, source):
    with BadImageioServer(bytes(SIZE)) as srv:
        code, stdout, err = cli("url", "upload", source, srv.url, "--json")
        assert bytes(srv.data) == DATA
    assert (code, err) == (0, "")
    result = json.loads(stdout)
    assert result["verified"] is True and result["checksum"]["value"]


def test_url_upload_flipped_bytes_with_checksum_fails(cli, source):
    with BadImageioServer(bytes(SIZE), fault="flip") as srv:
        code, stdout, err = cli("url", "upload", source, srv.url, "--json")
    assert code == 1 and stdout == ""
    _checksum_line(err, str(source))


def test_url_upload_flipped_bytes_without_checksum_says_not_verified(cli, source):
    with BadImageioServer(bytes(SIZE), fault="flip", features=FEATURES_NO_CHECKSUM) as srv:
        code, stdout, err = cli("url", "upload", source, srv.url, "--json")
        assert bytes(srv.data) != DATA
    assert (code, err) == (0, "")
    result = json.loads(stdout)
    assert result["verified"] is False
    assert result["verify_skipped"] == "the server does not offer checksum"


def test_url_upload_no_verify(cli, source):
    with BadImageioServer(bytes(SIZE), fault="flip") as srv:
        code, stdout, err = cli("url", "upload", source, srv.url, "--json", "--no-verify")
    assert (code, err) == (0, "")
    assert json.loads(stdout)["verified"] is False


def test_url_upload_format_raw_of_a_qcow2_file_verifies_its_bytes(cli, tmp_path):
    """--format raw sends the file's own bytes: those are what is verified."""
    import subprocess
    src = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "1M"], check=True)
    data = src.read_bytes()
    with BadImageioServer(bytes(len(data))) as srv:
        code, stdout, err = cli("url", "upload", "--format", "raw", src, srv.url, "--json")
        assert bytes(srv.data) == data
    assert (code, err) == (0, "")
    assert json.loads(stdout)["verified"] is True


@pytest.mark.parametrize("fault, line", [
    ("options-lots", 'imagetool: error: imageio OPTIONS: server sent max_readers "lots", '
                     "expected a positive integer"),
    ("checksum-missing", "imagetool: error: imageio GET checksum: server sent "
                         '{"algorithm": "blake2b", "block_size": 4194304}, '
                         'expected an object with a hex "checksum"'),
])
def test_url_upload_to_a_bad_server(cli, source, fault, line):
    with BadImageioServer(bytes(SIZE), fault=fault) as srv:
        code, stdout, err = cli("url", "upload", source, srv.url, "--json")
    assert code == 1 and stdout == ""
    assert _error_line(err) == line


# --- formats: what qemu reads, and a destination that refuses the bytes ----------

def _qcow2_with_header_size(path, header_size: int) -> None:
    """A qemu-img qcow2 of 1 MiB with data, its header size edited."""
    import struct
    import subprocess
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(path)],
                   check=True, capture_output=True)
    with open(path, "r+b") as f:
        f.seek(24)                  # the header's size field (big endian u64)
        f.write(struct.pack(">Q", header_size))


def test_qcow2_size_not_a_multiple_of_512_reads_as_qemu_does(tmp_path, cli):
    import subprocess
    from imagetool.formats import inspect
    src = tmp_path / "odd.qcow2"
    _qcow2_with_header_size(src, 1000000)
    qemu = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(src)],
                                     check=True, capture_output=True, text=True).stdout)
    assert qemu["virtual-size"] == 999936
    assert inspect(src).virtual_size == 999936
    code, _, err = cli("convert", src, tmp_path / "out.raw", "-O", "raw")
    assert (code, err) == (0, "")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src),
                    str(tmp_path / "qemu.raw")], check=True)
    assert (tmp_path / "out.raw").read_bytes() == (tmp_path / "qemu.raw").read_bytes()
    assert os.path.getsize(tmp_path / "out.raw") == 999936


def test_qcow2_size_not_a_multiple_of_512_uploads_and_verifies(tmp_path, cli):
    src = tmp_path / "odd.qcow2"
    _qcow2_with_header_size(src, 1000000)
    with BadImageioServer(bytes(999936)) as srv:
        code, stdout, err = cli("url", "upload", src, srv.url, "--json")
        assert bytes(srv.data) == b"\x5a" * 999936
    assert (code, err) == (0, "")
    assert json.loads(stdout)["verified"] is True


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_refused_by_the_file_size_limit_is_one_line(tmp_path, fmt):
    import resource
    import signal
    import subprocess
    import sys
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(4 << 20))
    dst = tmp_path / f"dst.{fmt}"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    p = subprocess.run([sys.executable, "-m", "imagetool", "convert", str(src), str(dst),
                        "-O", fmt], capture_output=True, text=True, preexec_fn=limit,
                       timeout=120)
    assert p.returncode == 1
    assert _error_line(p.stderr) == (
        f"imagetool: error: {dst}: cannot write: File too large: the file system or the "
        f"file size limit (ulimit -f) refuses a file of {4 << 20} bytes; write it to "
        "another file system or raise the limit")
    assert sorted(os.listdir(tmp_path)) == ["src.raw"]
