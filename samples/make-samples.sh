#!/bin/sh
# Rebuild the small sample images in this directory (each under 2 MiB).
# Needs: python3, qemu-img, qemu-io (qemu-utils), xorriso or genisoimage.
# The content is deterministic (seeded), the qcow2 layout is qemu's.
#
# Note: git stores holes as zeros, so a fresh checkout of data-holes.raw is
# fully allocated; run `fallocate -d samples/data-holes.raw` (or this
# script) to punch the holes again.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Sparse raw file: 1.5 MiB, data at 0-192K and 1M-1088K, the rest holes.
python3 - <<'PY'
import random
r = random.Random(2)
with open("data-holes.raw", "wb") as f:
    f.truncate(1536 * 1024)
    f.write(r.randbytes(192 * 1024))
    f.seek(1024 * 1024)
    f.write(r.randbytes(64 * 1024))
PY

# qcow2 v3, 16 MiB virtual: random data, text, a zero cluster, holes.
python3 - "$tmp/dh.raw" <<'PY'
import random, sys
r = random.Random(1)
with open(sys.argv[1], "wb") as f:
    f.truncate(16 << 20)
    f.write(r.randbytes(512 << 10))
    f.seek(4 << 20)
    f.write(b"imagetool sample: data, zeros and holes\n" * 6000)
    f.seek((16 << 20) - (128 << 10))
    f.write(r.randbytes(128 << 10))
PY
rm -f data-holes.qcow2
qemu-img convert -q -f raw -O qcow2 -o compat=1.1 "$tmp/dh.raw" data-holes.qcow2
qemu-io -f qcow2 -c "write -z 8M 256k" -c "write -z 128k 64k" data-holes.qcow2 >/dev/null

# Compressed qcow2 (zlib), 32 MiB virtual, mostly compressible text.
python3 - "$tmp/c.raw" <<'PY'
import random, sys
r = random.Random(3)
with open(sys.argv[1], "wb") as f:
    f.truncate(32 << 20)
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    f.write(line * ((6 << 20) // len(line)))
    f.seek(20 << 20)
    f.write(r.randbytes(256 << 10))
PY
rm -f compressed.qcow2
qemu-img convert -q -c -f raw -O qcow2 "$tmp/c.raw" compressed.qcow2

# ISO 9660 image with one small file.
mkdir "$tmp/iso"
printf 'imagetool sample ISO 9660 image\n' > "$tmp/iso/README.TXT"
rm -f tiny.iso
if command -v xorriso >/dev/null; then
    xorriso -as mkisofs -quiet -V IMAGETOOL -o tiny.iso "$tmp/iso"
else
    genisoimage -quiet -V IMAGETOOL -o tiny.iso "$tmp/iso"
fi

ls -ls data-holes.raw data-holes.qcow2 compressed.qcow2 tiny.iso
