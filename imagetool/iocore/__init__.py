"""The I/O core: the Backend protocol (``backend``), the wrappers that add
retries, sharing, journaling, flushing and windows to any backend
(``backends``), and the one copy loop (``copier``). Nothing here imports a
higher floor (ARCHITECTURE.md): formats, the imageio client, the transfer
workflows and the local engine all stand on it."""
