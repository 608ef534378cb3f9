"""One exception hierarchy for the whole toolkit.

The CLI maps each class to an exit code (``exit_code``) and prints the
message on one line; the library never calls ``sys.exit``.
"""

from __future__ import annotations


class ImagetoolError(Exception):
    """Base of every error imagetool raises on purpose."""

    exit_code = 1


class UsageError(ImagetoolError):
    """What was asked cannot be meant: a malformed engine URL, an unknown
    mode. Exit code 2, as for the command line's own usage errors."""

    exit_code = 2


# --- local image files -----------------------------------------------------

class FormatError(ImagetoolError):
    """A local image cannot be used: unsupported, corrupt or refused."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class UnsupportedFormat(FormatError):
    """A format imagetool recognises but does not handle (vmdk, vhd, LUKS...)."""


class CorruptImage(FormatError):
    """The file claims a format but its structures are invalid or truncated."""


class UnsupportedFeature(FormatError):
    """A valid image using a feature imagetool refuses (encryption, unknown bits)."""


class DestinationExists(FormatError):
    """A file to be written exists (or is a directory) and overwriting it was
    not asked for: convert, download and url download all refuse so."""

    def __init__(self, path: str, message: str = "file exists (use --force to overwrite)"):
        super().__init__(message, path)


# --- engine (control plane) ------------------------------------------------

class EngineError(ImagetoolError):
    """The engine answered with a fault."""

    def __init__(self, message: str, status: int | None = None,
                 reason: str | None = None, detail: str | None = None):
        self.status = status
        self.reason = reason
        self.detail = detail
        super().__init__(message)


class NotFound(EngineError):
    """404: the entity does not exist."""


class Conflict(EngineError):
    """409: the entity is locked or in the wrong state."""


class AuthError(EngineError):
    """401/403 from the engine, or the SSO refused the credentials."""

    exit_code = 3


class ConnectionFailed(ImagetoolError):
    """The engine or data plane could not be reached (DNS, refused, TLS)."""

    exit_code = 3


# --- data plane ------------------------------------------------------------

class ImageioError(ImagetoolError):
    """The imageio data plane answered with an error status."""

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


class ProtocolError(ImageioError):
    """The data plane answered something its protocol does not allow (a
    range not asked for, extents that do not tile the image, malformed
    OPTIONS...): a broken or hostile server, not worth retrying."""

    def __init__(self, message: str):
        super().__init__(message, status=None)


# --- transfers -------------------------------------------------------------

class TransferError(ImagetoolError):
    """An image transfer failed (phase finished_failure, timeout, ...)."""


class ChecksumMismatch(TransferError):
    """The two sides of a transfer hold different guest data."""

    def __init__(self, local: str, remote: str, what: str = ""):
        self.local = local
        self.remote = remote
        prefix = f"{what}: " if what else ""
        super().__init__(
            f"{prefix}checksum mismatch: local {local} != remote {remote}")


class TimeoutExpired(ImagetoolError):
    """A wait with a deadline ran out."""
