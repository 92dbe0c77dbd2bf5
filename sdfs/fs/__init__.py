"""The FUSE filesystem: plain logic (filesystem.py, encoder.py) under a thin FUSE layer (operations.py)."""
