"""The pruning optimizers as torch.optim.Optimizers, on one engine: H2SPG (spec §5.5, erasing mode), DHSPG
(spec §5.4) and HESSO (spec §5.6), and the pure kernels they are built from."""

from otov3.optim.dhspg import DHSPG
from otov3.optim.h2spg import H2SPG
from otov3.optim.hesso import HESSO

__all__ = ["DHSPG", "H2SPG", "HESSO"]
