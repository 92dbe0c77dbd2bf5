"""The LMDB store (no torch here)."""

from .store import (CHUNK, DIR, KIND_NAMES, LATENT, MAX_FILE_SIZE, NAME_MAX, PENDING, ROOT, SPECIAL, SYMLINK, VERBATIM,
                    Inode, NewFile, Store, StoreError, Streamed)

__all__ = ["CHUNK", "DIR", "KIND_NAMES", "LATENT", "MAX_FILE_SIZE", "NAME_MAX", "PENDING", "ROOT", "SPECIAL", "SYMLINK",
           "VERBATIM", "Inode", "NewFile", "Store", "StoreError", "Streamed"]
