"""The FUSE filesystem: plain logic (filesystem.py, encoder.py) under a thin fusepy layer (operations.py)."""
