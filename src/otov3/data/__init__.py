"""Local dataset loaders (no downloads)."""

from otov3.data.fashion_mnist import FashionMNIST, load_fashion_mnist

__all__ = ["FashionMNIST", "load_fashion_mnist"]
