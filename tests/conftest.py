"""Make the shared test helpers (`supernets`, `equivalence`, ...) importable from every test module."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# The test models are tiny: one intra-op thread is ~100x faster than two threads fighting over 2 busy cores.
import torch  # noqa: E402

torch.set_num_threads(1)
