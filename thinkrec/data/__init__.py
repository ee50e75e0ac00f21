"""Raw data: the public catalogue and interaction log, filtered and split."""

from thinkrec.data.movielens import Dataset, Item, User, load_dataset, load_prepared, prepare

__all__ = ["Dataset", "Item", "User", "load_dataset", "load_prepared", "prepare"]
