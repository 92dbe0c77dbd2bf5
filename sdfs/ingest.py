"""What the store keeps of an encode attempt. Shared by the mount's encoder
and `sdfs import`, so both judge, log and label files the same way.

Internal per-file notes live in the store's xattrs under names without the
`user.` prefix, which the filesystem never lists or lets users write:
``sdfs.verdict`` (the decision, shown as user.sdfs.verdict),
``sdfs.original_bytes`` (what was written, for savings figures) and
``sdfs.source`` (size and mtime of an imported file, for resuming imports).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import NotACandidate, SdfsError

VERDICT = b"sdfs.verdict"
ORIGINAL_BYTES = b"sdfs.original_bytes"
SOURCE = b"sdfs.source"

# verdict prefixes; `sdfs stats` counts files by them
KEEP_LATENT = "keep latent"
KEEP_ORIGINAL = "keep original"  # an image the guard kept as it was: see kept_original_why
STORED_VERBATIM = "stored verbatim"  # not an image, or one sdfs does not take (damaged, 16-bit, …)

# why an image was kept as it was (the keys of `sdfs stats --json` verdicts)
BELOW_FLOOR = "below_floor"  # too far from its reconstruction
NOT_SMALLER = "not_smaller"  # the latent record would not have been smaller than the file
KEPT_WHY_TEXT = {BELOW_FLOOR: "below the fidelity floor", NOT_SMALLER: "the latent was not smaller"}


def kept_original_why(verdict: str) -> str:
    """BELOW_FLOOR or NOT_SMALLER for a "keep original: ..." verdict (the
    reason's wording is the guard's, see guard.decide)."""
    from .codec.guard import NOT_SMALLER as not_smaller_reason

    return NOT_SMALLER if not_smaller_reason in verdict else BELOW_FLOOR


@dataclass(frozen=True)
class Outcome:
    verdict: str
    record: bytes | None  # None: keep the original bytes
    output_length: int
    log_level: int

    def notes(self, original_length: int) -> dict[bytes, bytes]:
        return {VERDICT: self.verdict.encode(), ORIGINAL_BYTES: str(original_length).encode()}


def judge(data: bytes, result, length: int | None = None) -> Outcome:
    """``result``: what Codec.encode_many gave for ``data`` (EncodeResult or
    SdfsError). ``length``: the file's size, where ``data`` is only its head."""
    length = len(data) if length is None else length
    if isinstance(result, SdfsError):
        # a damaged or unsupported image deserves a warning; a text file does not
        looks_like_image = data.startswith((b"\x89PNG", b"\xff\xd8\xff"))
        quiet = isinstance(result, NotACandidate) and not looks_like_image
        return Outcome(f"{STORED_VERBATIM}: {result}", None, length, logging.INFO if quiet else logging.WARNING)
    if not result.verdict.keep_latent:
        return Outcome(f"{KEEP_ORIGINAL}: {result.verdict.reason}", None, length, logging.INFO)
    return Outcome(f"{KEEP_LATENT}: {result.verdict.reason}", result.record, result.output_length, logging.INFO)


def staged_notes(length: int) -> dict[bytes, bytes | None]:
    """Notes for content just written: an empty file is final at once (it has
    its verdict); anything else waits for the encoder, so an earlier verdict
    no longer describes it."""
    if length == 0:
        return {VERDICT: f"{STORED_VERBATIM}: empty file".encode(), ORIGINAL_BYTES: b"0"}
    return {VERDICT: None, ORIGINAL_BYTES: None}


def model_for_store(identity) -> dict:
    """The VAE identity as the store's meta.model keeps it (docs/FORMAT.md)."""
    return {
        "name": identity.name,
        "weights_sha256": identity.weights_sha256.hex(),
        "scaling_factor": round(identity.scaling_factor, 6),
        "latent_channels": identity.latent_channels,
        "spatial_factor": identity.spatial_factor,
    }
