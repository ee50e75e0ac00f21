"""P-Score: a learned preference model over (user history, candidate item), the RL reward model.

As in the OneRec report (Sec. 2.4.1) it has one tower per interaction signal, each trained with
its own binary cross-entropy, and fuses their probabilities into one personalised score. The
signals come from the data set's feedback (its config's `interactions.feedback`, `feedback_heads`):
the first head is whether the user interacts with the item at all (named by the config's verb:
`watch` on MovieLens, against random items the user never touched); ratings add `like` and `love`
at the config's thresholds (MovieLens: rated 4 or 5, rated 5); event types add one head per type
stronger than the weakest (`cart`, `purchase` over `view`); implicit data has the first head only.
The user side is target attention (DIN/SIM style) of
the candidate over the recent history; items start from the tokenizer's item embeddings (content
plus collaborative part), so items never seen in training still get a sensible score.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from thinkrec.config import PScoreConfig
from thinkrec.data import Dataset
from thinkrec.errors import ThinkRecError

HEADS_FILE = "heads.json"


@dataclass(frozen=True)
class Head:
    """One tower: its positives are interactions of at least `min_strength` (the loader's feedback
    strength: 1 on implicit data, the rating, or the event type's strength)."""

    name: str
    min_strength: float = -math.inf


def feedback_heads(feedback: dict | None, verb: str = "interact") -> list[Head]:
    """The towers a data set's feedback supports (`feedback`: its config's interactions.feedback)."""
    heads = [Head(verb.split()[0] if verb.strip() else "interact")]
    fb = feedback or {"kind": "implicit"}
    if fb.get("kind") == "rating":
        heads += [Head(name, float(fb[name])) for name in ("like", "love") if fb.get(name)]
    elif fb.get("kind") == "events" and fb.get("events"):
        weakest = min(fb["events"].values())
        heads += [Head(n, float(v)) for n, v in sorted(fb["events"].items(), key=lambda kv: kv[1]) if v > weakest]
    names = [h.name for h in heads]
    if len(set(names)) < len(names):
        raise ThinkRecError(f"P-Score heads {names} repeat a name: rename the event type that is also the verb")
    return heads


def default_weights(heads: list[Head]) -> dict[str, float]:
    """The fusion when --head-weights is empty: the first head half, like/love 0.3/0.2 (OneRec's
    MovieLens-style split), other stronger signals sharing the other half equally."""
    first, rest = heads[0].name, [h.name for h in heads[1:]]
    if not rest:
        return {first: 1.0}
    if rest == ["like", "love"]:
        return {first: 0.5, "like": 0.3, "love": 0.2}
    return {first: 0.5} | {n: 0.5 / len(rest) for n in rest}


def head_labels(strength: float, heads: list[Head]) -> list[float]:
    """Labels of an item the user interacted with, per head; an untouched one is all zeros."""
    return [float(strength >= h.min_strength) for h in heads]


class PScoreModel(nn.Module):
    def __init__(self, item_features: np.ndarray, heads: list[Head], dim: int = 64, history: int = 20):
        super().__init__()
        self.heads, self.history = heads, history
        n, d = item_features.shape
        self.register_buffer("features", torch.from_numpy(np.asarray(item_features, dtype=np.float32)))
        self.project = nn.Linear(d, dim)
        self.item_id = nn.Embedding(n + 1, dim, padding_idx=n)  # row n = padding
        nn.init.zeros_(self.item_id.weight)  # starts as the content projection alone
        self.pad = n
        self.towers = nn.ModuleDict(
            {h.name: nn.Sequential(nn.Linear(4 * dim, 128), nn.ReLU(), nn.Linear(128, 1)) for h in heads}
        )

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([self.features, torch.zeros_like(self.features[:1])])  # padding row
        return self.project(feats[items]) + self.item_id(items)

    def forward(self, history: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """history (B, L) item idx padded with `pad`, candidate (B,) -> logits (B, heads)."""
        h, c = self.embed(history), self.embed(candidate)
        scores = (h @ c.unsqueeze(-1)).squeeze(-1) / h.shape[-1] ** 0.5
        scores = scores.masked_fill(history == self.pad, -1e9)
        user = (scores.softmax(-1).unsqueeze(-1) * h).sum(1)
        mean = (h * (history != self.pad).unsqueeze(-1)).sum(1) / (history != self.pad).sum(1, keepdim=True).clamp(
            min=1
        )
        x = torch.cat([user, c, user * c, mean], -1)
        return torch.cat([tower(x) for tower in self.towers.values()], -1)


class PScore:
    """The trained model with its fusion weights: `score(histories, items)` -> one float per pair."""

    def __init__(self, model: PScoreModel, weights: dict[str, float]):
        names = [h.name for h in model.heads]
        weights = weights or default_weights(model.heads)
        unknown = set(weights) - set(names)
        if unknown:
            raise ThinkRecError(
                f"head_weights names unknown heads {sorted(unknown)}; this data set's heads are {names}"
            )
        self.model = model.eval()
        self.weights = torch.tensor([weights.get(h, 0.0) for h in names])

    def pad(self, histories: list[list[int]]) -> torch.Tensor:
        L = self.model.history
        out = torch.full((len(histories), L), self.model.pad, dtype=torch.long)
        for r, h in enumerate(histories):
            h = h[-L:]
            if h:
                out[r, L - len(h) :] = torch.tensor(h)
        return out

    @torch.no_grad()
    def heads(self, histories: list[list[int]], items: list[int]) -> torch.Tensor:
        return torch.sigmoid(self.model(self.pad(histories), torch.tensor(items, dtype=torch.long)))

    def score(self, histories: list[list[int]], items: list[int]) -> list[float]:
        return (self.heads(histories, items) @ self.weights).tolist()

    def save(self, path: Path, cfg: PScoreConfig) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), path / "pscore.pt")
        (path / "pscore_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        (path / HEADS_FILE).write_text(json.dumps([asdict(h) for h in self.model.heads]))

    @classmethod
    def load(cls, path: Path, item_features: np.ndarray) -> PScore:
        try:
            cfg = PScoreConfig(**json.loads((path / "pscore_config.json").read_text()))
            heads_file = path / HEADS_FILE
            # a P-Score saved before heads came from the data set's feedback has MovieLens's three
            heads = (
                [Head(**h) for h in json.loads(heads_file.read_text())]
                if heads_file.exists()
                else feedback_heads({"kind": "rating", "like": 4, "love": 5}, "watch")
            )
            model = PScoreModel(item_features, heads, cfg.pscore_dim, cfg.pscore_history)
            model.load_state_dict(_grown(torch.load(path / "pscore.pt", weights_only=True), model))
        except (OSError, ValueError, TypeError, RuntimeError) as e:
            raise ThinkRecError(
                f"P-Score model in {path} is missing or corrupt ({e}); re-run `thinkrec pscore`"
            ) from None
        return cls(model, cfg.weights())


def _grown(state: dict, model: PScoreModel) -> dict:
    """A state saved before items joined the catalogue (thinkrec add-items): the new items' id rows
    start at zero, as training starts every item (their content projection scores them), and the
    features are the run's current ones."""
    rows = state["item_id.weight"]
    n = model.item_id.weight.shape[0]
    if rows.shape[0] < n:
        grown = torch.zeros(n, rows.shape[1], dtype=rows.dtype)
        grown[: rows.shape[0] - 1] = rows[:-1]  # the old padding row (the last) stays zero at the new end
        state = {**state, "item_id.weight": grown, "features": model.features}
    return state


def user_scores(scorer: PScore, histories: list[list[int]], n_items: int, batch: int = 8192) -> np.ndarray:
    """(users, items) fused scores, float16: each history against every catalogue item."""
    pairs = [(u, i) for u in range(len(histories)) for i in range(n_items)]
    out = np.empty(len(pairs), dtype=np.float16)
    for s in range(0, len(pairs), batch):
        chunk = pairs[s : s + batch]
        out[s : s + len(chunk)] = scorer.score([histories[u] for u, _ in chunk], [i for _, i in chunk])
    return out.reshape(len(histories), n_items)


def examples(
    ds: Dataset, heads: list[Head], targets: list[tuple[int, int]], negatives: int, rng: np.random.Generator
) -> tuple[list[list[int]], list[int], list[list[float]]]:
    """(user, position) targets -> histories, candidates and head labels, each item the user
    interacted with beside `negatives` random items the user never touched."""
    n = len(ds.items)
    hist, cand, labels = [], [], []
    for u_idx, t in targets:
        u = ds.users[u_idx]
        seen = set(u.items)
        hist.append(u.items[:t])
        cand.append(u.items[t])
        labels.append(head_labels(u.ratings[t], heads))
        for _ in range(negatives):
            j = int(rng.integers(n))
            while j in seen:
                j = int(rng.integers(n))
            hist.append(u.items[:t])
            cand.append(j)
            labels.append([0.0] * len(heads))
    return hist, cand, labels


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # average ranks over ties
    _, first, counts = np.unique(allv, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def train_pscore(ds: Dataset, item_features: np.ndarray, cfg: PScoreConfig, heads: list[Head]) -> tuple[PScore, dict]:
    """Train on every train-part interaction (never the valid/test targets); report per-head AUC
    on the held-out valid and test targets of every user, against fresh negatives."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_targets = [(ui, t) for ui, u in enumerate(ds.users) for t in range(1, len(u.train_items()))]
    held_targets = [(ui, len(u.items) - k) for ui, u in enumerate(ds.users) for k in (2, 1)]
    model = PScoreModel(item_features, heads, cfg.pscore_dim, cfg.pscore_history)
    scorer = PScore(model, cfg.weights())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.pscore_lr)
    losses = []
    for _ in tqdm(range(cfg.pscore_epochs), desc="P-Score"):
        model.train()
        hist, cand, labels = examples(ds, heads, train_targets, cfg.pscore_negatives, rng)
        perm = rng.permutation(len(cand))
        for start in range(0, len(perm), 512):
            b = perm[start : start + 512]
            logits = model(scorer.pad([hist[i] for i in b]), torch.tensor([cand[i] for i in b]))
            y = torch.tensor([labels[i] for i in b])
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    hist, cand, labels = examples(ds, heads, held_targets, cfg.pscore_negatives, rng)
    probs = np.concatenate(
        [scorer.heads(hist[s : s + 2048], cand[s : s + 2048]).numpy() for s in range(0, len(cand), 2048)]
    )
    y = np.asarray(labels)
    touched = y[:, 0] == 1
    names = [h.name for h in heads]
    report = {
        "heads": names,
        "weights": {n: round(w, 6) for n, w in zip(names, scorer.weights.tolist(), strict=True)},
        "train_examples": len(train_targets) * (1 + cfg.pscore_negatives),
        "final_loss": float(np.mean(losses[-20:])),
    }
    report["auc"] = {h: auc(probs[:, k], y[:, k]) for k, h in enumerate(names)}
    # the stronger heads among items the user did interact with: do they tell liked from merely
    # watched (bought from viewed), not only touched from untouched?
    report["auc_among_positives"] = {h: auc(probs[touched, k], y[touched, k]) for k, h in enumerate(names) if k}
    fused = probs @ scorer.weights.numpy()
    report["auc"][f"fused_vs_{names[0]}"] = auc(fused, y[:, 0])
    return scorer, report
