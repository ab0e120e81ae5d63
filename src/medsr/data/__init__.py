"""Datasets, splits, degradations and patch sampling."""

from medsr.data.dataset import (
    Item,
    PairSampler,
    build_sampler,
    load_arrays,
    scan,
    select,
    split_of,
    spread,
)

__all__ = ["Item", "PairSampler", "build_sampler", "load_arrays", "scan", "select", "split_of", "spread"]
