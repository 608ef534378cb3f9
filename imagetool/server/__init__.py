"""The local engine: an oVirt-compatible REST control plane and an imageio
data plane over a directory, with a SQLite inventory (``imagetool serve``)."""
