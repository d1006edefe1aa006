"""otov3: automatic sub-network search in general super-networks."""

from otov3.errors import CaptureError, ConstructionError, DataError, OptimizerError, OTOError, SearchSpaceError

__all__ = [
    "CaptureError",
    "ConstructionError",
    "DataError",
    "OTOError",
    "OptimizerError",
    "SearchSpaceError",
]
__version__ = "0.1.0"
