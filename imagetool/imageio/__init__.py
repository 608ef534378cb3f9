"""Data-plane client of one imageio transfer URL (the hot byte path)."""

from imagetool.imageio.backend import HttpBackend
from imagetool.imageio.client import ImageioClient, ImageioOptions

__all__ = ["HttpBackend", "ImageioClient", "ImageioOptions"]
