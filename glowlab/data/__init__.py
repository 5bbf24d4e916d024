"""Image datasets for glowlab: `ImageDataModule` and the dataset registry."""

from glowlab.data.datamodule import ImageDataModule, dataset_names
from glowlab.data.sources import DatasetNotFoundError

__all__ = ["DatasetNotFoundError", "ImageDataModule", "dataset_names"]
