"""The Backend protocol's names where the local engine's modules import them.

The protocol lives in ``imagetool.backend``, on the I/O core's floor under
the formats (ARCHITECTURE.md): the copier reads it without importing the
formats package. This module only hands its names on, for
``imagetool/server/`` until it imports ``imagetool.backend`` itself.
"""

from imagetool.backend import (LOCAL_FEATURES, Backend, BackendBase, Closing, Extent,
                               add_range, merge_extents, union_ranges)

__all__ = ["LOCAL_FEATURES", "Backend", "BackendBase", "Closing", "Extent", "add_range",
           "merge_extents", "union_ranges"]
