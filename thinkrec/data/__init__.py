"""Raw data: a data set's files, read through its config, filtered and split."""

from thinkrec.data.records import Dataset, Item, User
from thinkrec.data.stage import load_dataset, load_prepared, prepare

__all__ = ["Dataset", "Item", "User", "load_dataset", "load_prepared", "prepare"]
