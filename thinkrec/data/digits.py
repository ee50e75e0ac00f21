"""An image catalogue: scikit-learn's copy of the UCI handwritten digits (1,797 8 x 8 greyscale
images of 0-9, shipped inside the package, so nothing is downloaded). MovieLens-100K has no images;
this catalogue is where the vision path (image SIDs, "more like this" with a picture) is trained
and measured.

Every image is an item whose title names no digit ("Image 17"): the class is kept apart in
data/labels.json, for evaluation only, so SIDs can group items by class only through the image
features. A share of the images is held out as queries: pictures a user sends that are not
items. There are no users or interactions.
"""

from __future__ import annotations

import json

import numpy as np

from thinkrec.config import DataConfig
from thinkrec.data.records import Dataset, Item
from thinkrec.errors import ThinkRecError
from thinkrec.rundir import RunDir

NAME = "digits"
SPLIT_SEED = 0


def _png(pixels: np.ndarray, path) -> None:
    """An 8 x 8 digit (values 0-16) as a greyscale PNG, dark ink on white like a scanned page."""
    from PIL import Image

    Image.fromarray((255 - pixels * 255 / 16).astype(np.uint8), mode="L").save(path)


def prepare_digits(cfg: DataConfig, run: RunDir) -> Dataset:
    """Stage `data` for `--dataset digits`: the items, their images in data/images/<item_id>.png,
    the held-out query images in data/queries/, and data/labels.json."""
    from sklearn.datasets import load_digits

    if not 0.0 <= cfg.query_share < 1.0:
        raise ThinkRecError(f"query_share must be in [0, 1), not {cfg.query_share}")
    digits = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.images))
    if cfg.max_items > 0:
        order = order[: cfg.max_items]
    n_queries = int(round(cfg.query_share * len(order)))
    queries, catalogue = order[:n_queries], np.sort(order[n_queries:])
    out = run.sub("data")
    for folder in ("images", "queries"):
        (out / folder).mkdir(exist_ok=True)
    items, labels = [], {"items": {}, "queries": {}}
    for idx, i in enumerate(catalogue):
        item_id = f"img{i:04d}"
        items.append(Item(idx=idx, item_id=item_id, title=f"Image {i}", year="", genres=[]))
        _png(digits.images[i], out / "images" / f"{item_id}.png")
        labels["items"][item_id] = int(digits.target[i])
    for i in queries:
        _png(digits.images[i], out / "queries" / f"q{i:04d}.png")
        labels["queries"][f"q{i:04d}"] = int(digits.target[i])
    (out / "labels.json").write_text(json.dumps(labels, indent=1))
    return Dataset(NAME, items, [])


def load_labels(run: RunDir) -> dict[str, dict[str, int]]:
    path = run.path / "data" / "labels.json"
    if not path.exists():
        raise ThinkRecError(f"{path} is missing: image labels come with `thinkrec data --dataset digits`")
    return json.loads(path.read_text())
