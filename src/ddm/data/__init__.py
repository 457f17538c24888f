"""Datasets (a package; see core)."""

from .core import (
    DATASETS,
    Dataset,
    DatasetError,
    Split,
    available_datasets,
    channel_stats,
    load_dataset,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "Split",
    "available_datasets",
    "channel_stats",
    "load_dataset",
]
