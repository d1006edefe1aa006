"""One exception hierarchy for everything otov3 raises on purpose.

Every message says what is wrong, where (module or node by qualified name), and what the user can do.
"""

from __future__ import annotations


class OTOError(Exception):
    """Base class of every error otov3 raises deliberately."""


class CaptureError(OTOError):
    """The model could not be traced or run on the dummy input."""


class SearchSpaceError(OTOError):
    """The model has no usable search space (e.g. no trainable parameters)."""


class OptimizerError(OTOError):
    """H2SPG met a state it must not continue from (e.g. a non-finite gradient)."""


class ConstructionError(OTOError):
    """The sub-network could not be built exactly; nothing inexact is ever returned."""


class DataError(OTOError):
    """A local dataset file is missing or malformed."""
