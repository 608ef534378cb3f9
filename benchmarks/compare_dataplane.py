"""Throughput of our DataPlaneServer vs the reference ovirt-imageio daemon.

Same run, same data, same client (``ovirt_imageio.client`` upload/download,
4 workers, plain HTTP on loopback, or HTTPS with --tls; our server runs in
its own process like the daemon):

  (a) reference daemon, file ticket (it allows 1 writer for plain files),
  (a') reference daemon, NBD ticket through qemu-nbd (8 writers),
  (b) our DataPlaneServer, RawBackend ticket.

Usage: python benchmarks/compare_dataplane.py [--size 1G] [--workers 4] [--rounds 1] [--tls]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "support"))

from imageio_daemon import (  # noqa: E402
    ImageioDaemon, QemuNbd, make_tls_files, scratch_dir, server_ssl_context)
from ovirt_imageio import client as reference  # noqa: E402

from imagetool.formats.raw import RawBackend  # noqa: E402
from imagetool.server.dataplane import DataPlaneServer  # noqa: E402
from imagetool.server.tickets import Ticket, TicketRegistry  # noqa: E402
from imagetool.units import parse_size  # noqa: E402

MiB = 1024 * 1024


def _random_file(path: str, size: int) -> None:
    chunk = 8 * MiB
    with open(path, "wb") as f:
        done = 0
        while done < size:
            n = min(chunk, size - done)
            f.write(os.urandom(n))
            done += n


def _empty(path: str, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _run(label: str, url: str, src: str, back: str, size: int, workers: int,
         results: dict, cafile: str | None) -> None:
    t = time.monotonic()
    reference.upload(src, url, cafile, max_workers=workers)
    up = size / MiB / (time.monotonic() - t)
    if os.path.exists(back):
        os.unlink(back)
    t = time.monotonic()
    reference.download(url, back, cafile, fmt="raw", max_workers=workers)
    down = size / MiB / (time.monotonic() - t)
    results.setdefault(label, []).append((up, down))
    print(f"  {label:28s} upload {up:7.1f} MiB/s   download {down:7.1f} MiB/s", flush=True)


def serve(path: str, size: int, tls_dir: str | None) -> None:
    """Child mode: serve one RawBackend ticket until SIGTERM; print the URL."""
    registry = TicketRegistry()
    registry.add(Ticket(uuid="bench", size=size, ops=("read", "write"),
                        open_backend=lambda: RawBackend(path, "r+")))
    ctx = None
    if tls_dir:
        from imageio_daemon import TlsFiles
        ctx = server_ssl_context(TlsFiles(os.path.join(tls_dir, "ca.pem"),
                                          os.path.join(tls_dir, "server.pem"),
                                          os.path.join(tls_dir, "server.key")))
    server = DataPlaneServer(registry, ssl_context=ctx).start()
    print(f"{server.url}/images/bench", flush=True)
    signal.sigwait([signal.SIGTERM])
    server.stop()
    registry.remove("bench")


class OurServer:
    """Our DataPlaneServer in its own process, like the reference daemon:
    sharing the benchmark client's GIL would measure the client too."""

    def __init__(self, path: str, size: int, tls_dir: str | None):
        cmd = [sys.executable, __file__, "--serve", path, "--size", str(size)]
        if tls_dir:
            cmd += ["--tls-dir", tls_dir]
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        self.url = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1G")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--in-process", action="store_true",
                   help="run our server in this process (shares the client's GIL)")
    p.add_argument("--tls", action="store_true", help="HTTPS with a throwaway CA")
    p.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--tls-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    size = parse_size(args.size)
    if args.serve:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        serve(args.serve, size, args.tls_dir)
        return

    work = scratch_dir("imagetool-bench-")
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        src = os.path.join(work, "src.raw")
        _random_file(src, size)
        back = os.path.join(work, "back.raw")
        tls = make_tls_files(work) if args.tls else None
        cafile = tls.ca_file if tls else None
        daemon = ImageioDaemon(tls=tls).start()
        registry = TicketRegistry()
        ours = DataPlaneServer(registry, ssl_context=server_ssl_context(tls) if tls else None
                               ).start() if args.in_process else None
        try:
            for r in range(args.rounds):
                print(f"round {r + 1}: {size // MiB} MiB random data, "
                      f"{args.workers} workers, {'HTTPS' if tls else 'HTTP'}", flush=True)
                dst = _empty(os.path.join(work, "ref-file.raw"), size)
                _run("reference daemon, file", daemon.add_ticket(path=dst, size=size),
                     src, back, size, args.workers, results, cafile)

                dst = _empty(os.path.join(work, "ref-nbd.raw"), size)
                with QemuNbd(dst, "raw") as nbd:
                    _run("reference daemon, nbd", daemon.add_ticket(
                        nbd_socket=nbd.socket_path, size=size),
                        src, back, size, args.workers, results, cafile)

                dst = _empty(os.path.join(work, "ours.raw"), size)
                if ours is not None:
                    ticket = Ticket(uuid=f"bench-{r}", size=size, ops=("read", "write"),
                                    open_backend=lambda d=dst: RawBackend(d, "r+"))
                    registry.add(ticket)
                    _run("imagetool DataPlaneServer", f"{ours.url}/images/{ticket.uuid}",
                         src, back, size, args.workers, results, cafile)
                    registry.remove(ticket.uuid)
                else:
                    child = OurServer(dst, size, work if tls else None)
                    try:
                        _run("imagetool DataPlaneServer", child.url,
                             src, back, size, args.workers, results, cafile)
                    finally:
                        child.stop()
        finally:
            if ours is not None:
                ours.stop()
            daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def best(label: str) -> tuple[float, float]:
        runs = results[label]
        return max(u for u, _ in runs), max(d for _, d in runs)

    ou, od = best("imagetool DataPlaneServer")
    print("\nbest of rounds (MiB/s):")
    for label in results:
        u, d = best(label)
        print(f"  {label:28s} upload {u:7.1f}  download {d:7.1f}   "
              f"ours/this: upload {ou / u:4.2f}x  download {od / d:4.2f}x")


if __name__ == "__main__":
    main()
