"""Typed errors. ``str(error)`` is always one line a user can act on."""


class SdfsError(Exception):
    """Base class: anything sdfs reports to a user without a traceback."""

    exit_code = 1


class UsageError(SdfsError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = 2


class NotACandidate(SdfsError):
    """Input bytes that must be stored verbatim rather than as latents."""

    exit_code = 3


class ModelUnavailable(SdfsError):
    """The VAE weights cannot be loaded (offline, missing file, bad config)."""

    exit_code = 4


class ModelMismatch(SdfsError):
    """A record (or store) was made with another VAE than the one loaded."""

    exit_code = 5


class RecordError(SdfsError):
    """A record is corrupt, truncated or of an unknown format version."""

    exit_code = 6


class OutputEncodingError(SdfsError):
    """A reconstruction could not be encoded at its recorded byte length."""

    exit_code = 7
