"""The parallel copier, under its older name: it lives in ``imagetool.copier``."""

from imagetool.copier import (DEFAULT_REQUEST_SIZE, MAX_ZERO_REQUEST, CopyCancelled,  # noqa: F401
                              CopyError, CopyStats, _Request, copy, plan)
