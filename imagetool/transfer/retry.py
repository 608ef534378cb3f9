"""Per-request retries of transient data-plane errors.

``RetryingBackend`` wraps an ``HttpBackend`` (one connection) for the
copier: a request failing with a transient error (connection reset,
refused or aborted, timeout, 500/502/503/504) is tried again after an
exponential backoff with jitter, on a new connection, up to
``RetryPolicy.tries`` attempts and ``RetryPolicy.total`` seconds. Permanent
errors (403: ticket gone or expired, other 4xx) are raised at once.

Uploads write with ``flush=n``: after a 500 or a lost connection the server
may have dropped everything this connection sent since its last flush. So
the wrapper remembers those ranges and, before retrying, sends them again
(re-reading them from ``source``); a range is forgotten only after a
successful flush on this connection.

The code lives with the other backend wrappers in ``imagetool.backends``.
"""

from imagetool.backends import (NO_RETRY, TRANSIENT_STATUS, RetryingBackend,  # noqa: F401
                                RetryPolicy, call_with_retry, is_transient)
