"""Error types raised at adrt's boundaries. Each message names the offending value and what was expected."""


class AdrtError(Exception):
    """Base class: the CLI turns these into a one-line error and a non-zero exit."""


class DataError(AdrtError):
    """A dataset folder, image or mask that cannot be used."""


class BundleError(AdrtError):
    """A bundle that is missing files, fails its checksums or comes from an unknown format version."""


class InputError(AdrtError):
    """An array or option handed to the runtime that does not match the bundle's input spec."""


class BackendError(AdrtError):
    """A backend that was asked for and is not available (never a silent fallback)."""


class ResultError(AdrtError):
    """The model produced non-finite values (NaN/Inf): never handed back as a map or a score."""


class OutputError(AdrtError):
    """An output adrt must not or cannot write: a folder that is not its own kind, an existing one
    without --overwrite, its own input, or a write that failed (disk full, permissions)."""


class ClosedError(AdrtError):
    """A Session (or C handle) used after it was closed."""


class ServingError(AdrtError):
    """A Triton model repository, model configuration or server that cannot be used as asked."""
