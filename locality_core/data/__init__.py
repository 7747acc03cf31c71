"""Data sets: one registry, each entry giving train/test tensors (N, C, H, W) in [-1, 1] and a fingerprint."""

from locality_core.data.base import Dataset, DatasetError, DatasetSpec
from locality_core.data.download import data_home
from locality_core.data.registry import (
    REGISTRY,
    dataset_summary,
    default_dataset_name,
    get_spec,
    list_datasets,
    load_dataset,
)
from locality_core.data.user import ImportReport, delete_user_dataset, import_images, list_user_datasets

__all__ = [
    "REGISTRY",
    "Dataset",
    "DatasetError",
    "DatasetSpec",
    "ImportReport",
    "data_home",
    "dataset_summary",
    "default_dataset_name",
    "delete_user_dataset",
    "get_spec",
    "import_images",
    "list_datasets",
    "list_user_datasets",
    "load_dataset",
]
