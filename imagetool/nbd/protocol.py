"""The NBD protocol's numbers and this server's limits.

Values as the NBD project documents them (``doc/proto.md``, "The NBD
protocol"); the limits bound what one client can make the server hold.
"""

from __future__ import annotations

from imagetool.errors import ImagetoolError

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FLAGS = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_CAN_MULTI_CONN = 1 << 8
TRANSMISSION_FLAGS = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
CMD_FLAG_REQ_ONE = 1 << 3

REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE = 0, 1, 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1

STATE_HOLE, STATE_ZERO = 1, 2
ALLOCATION = "base:allocation"
META_CONTEXT_ID = 1

EPERM, EIO, EINVAL, EOVERFLOW = 1, 5, 22, 75

MAX_OPTION = 64 << 10          # an option's data: a name and a few queries
MAX_NAME = 4096                # NBD's limit on export names
MAX_QUERIES = 64
MAX_REQUEST = 32 << 20         # the request size every client may send
PIECE = 4 << 20                # read and sent at a time
MAX_DESCRIPTORS = 4096         # per block status reply
MAX_CONNECTIONS = 16
HANDSHAKE_TIMEOUT = 60.0


class NbdError(ImagetoolError):
    """The NBD server cannot start (socket path taken, no exports)."""


class _Closed(Exception):
    """The client went away, or must be disconnected."""
