"""The LMDB store (no torch here)."""

from .store import CHUNK, DIR, KIND_NAMES, LATENT, PENDING, ROOT, SYMLINK, VERBATIM, Inode, NewFile, Store, StoreError

__all__ = ["CHUNK", "DIR", "KIND_NAMES", "LATENT", "PENDING", "ROOT", "SYMLINK", "VERBATIM", "Inode", "NewFile", "Store",
           "StoreError"]
