"""imagetool: move virtual-machine disk images in and out of oVirt engines.

The package is layered (imports only point down):

- ``imagetool.cli``       click commands (thin)
- ``imagetool.transfer``  upload/download workflows, the parallel copier
- ``imagetool.engine``    REST client of an oVirt engine
- ``imagetool.imageio``   data-plane client of one transfer URL
- ``imagetool.formats``   local image files: detect, read, write, measure
- ``imagetool.checksum``  imageio's block checksum over any backend
- ``imagetool.server``    the local engine (``imagetool serve``)
"""

__version__ = "0.1.0"
