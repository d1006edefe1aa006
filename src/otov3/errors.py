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


class DriftError(OTOError):
    """The model changed after `OTO(...)` traced it (dtype, device, or a parameter replaced)."""


class ExportError(OTOError):
    """Writing the sub-network's files failed; the folder is left as it was.

    Attributes:
        path: the file or folder that could not be written.
        subnet: the verified sub-network, still usable (also kept as ``oto.last_subnet``).
    """

    def __init__(self, message: str, *, path: object = None, subnet: object = None) -> None:
        super().__init__(message)
        self.path = path
        self.subnet = subnet
