"""A read-only NBD server on a unix socket, in pure Python.

It serves Backends (a backup point's disks: ``backup serve``) to any NBD
client: ``qemu-img``, ``qemu-nbd --connect``, ``nbdfuse``, ``guestfish
--format=raw -a nbd://...``. The protocol is the one the NBD project
documents (``doc/proto.md``, "The NBD protocol"):

- handshake: fixed newstyle only, with ``NBD_FLAG_NO_ZEROES``; options
  ``NBD_OPT_EXPORT_NAME``, ``NBD_OPT_GO``, ``NBD_OPT_INFO`` (export size,
  flags, block sizes), ``NBD_OPT_LIST``, ``NBD_OPT_ABORT``,
  ``NBD_OPT_STRUCTURED_REPLY`` and ``NBD_OPT_{LIST,SET}_META_CONTEXT``
  (``base:allocation`` only); any other option is answered
  ``NBD_REP_ERR_UNSUP`` (``NBD_OPT_STARTTLS`` included: the socket is
  local and owner-only);
- transmission: ``NBD_CMD_READ`` (simple replies, or structured ones
  where zero extents are sent as holes), ``NBD_CMD_BLOCK_STATUS``
  (``base:allocation``: a backend's zero extents are ``HOLE|ZERO``) and
  ``NBD_CMD_DISC``. Exports are read-only (``NBD_FLAG_READ_ONLY``):
  writes, trims and zeroing get ``EPERM``; flush and cache, not offered,
  ``EINVAL``.

Everything a client sends is checked at the door: option and name lengths
are bounded (an option longer than ``MAX_OPTION`` ends the connection,
since skipping it would mean reading what the client chooses), a read
longer than ``MAX_REQUEST`` or reaching past the end of the export gets
``EINVAL``/``EOVERFLOW`` and the connection goes on; a bad request magic
means the stream is out of step, so that connection is closed. No client
can stop the server or others' connections, and memory stays bounded:
at most ``MAX_CONNECTIONS`` connections, each reading one request at a
time in pieces of at most ``PIECE`` bytes.
"""

from imagetool.nbd.protocol import NbdError
from imagetool.nbd.server import Export, NbdServer, serve

__all__ = ["Export", "NbdError", "NbdServer", "serve"]
