"""RQ-Kmeans (OneRec report, Sec. 2.1.2): level l runs k-means on the residuals R^(l), assigns each
item its nearest centroid s^l, and passes on R^(l+1) = R^(l) - c_{s^l}. Codes are coarse to fine.

Plain k-means on residuals leaves a few huge clusters at the deeper levels (low token entropy,
many collisions). With `balanced=True` (default) each level is refined by a few Lloyd rounds whose
assignment step caps every cluster at ceil(n / K) items (greedy on sorted distances), which gives
near-uniform code use, the property the report's Table 11 measures.

Collisions (two items on the same full code) are resolved without lengthening the code: the item
nearest to the shared code keeps it, and each other item moves to the free last-level code with the
smallest reconstruction error under the same prefix; if that prefix is full, to the best free
(level-2, level-3) pair under the same first code, and so on up the levels. Every item ends with a
unique code of exactly `levels` tokens, as long as codebook_size ** levels >= items.

Large catalogues (more than `fit_sample` items) take a faster path with the same ideas: the codebooks
are fitted on a seeded sample, every item is then encoded level by level with the same capped
assignment, and collisions are resolved in bulk: each full code's nearest item keeps it, and the
others under a prefix take that prefix's free last-level codes in order of their error (vectorised
per prefix); only the items a prefix cannot hold go through the one-by-one search above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from thinkrec.errors import ThinkRecError


def auto_codebook_size(n_items: int, levels: int) -> int:
    """About twice the levels-th root of the catalogue, as a power of two (>= 8): enough room for
    unique codes while keeping each level's clusters well populated."""
    root = n_items ** (1.0 / levels)
    return max(8, 2 ** math.ceil(math.log2(2 * root)))


@dataclass
class RQResult:
    codes: np.ndarray  # (n_items, levels) int, unique rows
    codebooks: list[np.ndarray]  # per level (K, d)
    collisions_resolved: int


def fit_rq_kmeans(
    x: np.ndarray,
    levels: int,
    k: int,
    iters: int = 50,
    seed: int = 0,
    balanced: bool = True,
    fit_sample: int = 0,
) -> RQResult:
    """Codebooks and unique codes for `x`. With `fit_sample` > 0 and a larger catalogue, the
    codebooks are fitted on that many items drawn at random and the rest are encoded with them."""
    n = len(x)
    if k**levels < n:
        raise ThinkRecError(f"codebook_size {k} with {levels} levels gives {k**levels} codes for {n} items")
    if n < k:
        raise ThinkRecError(f"codebook_size {k} is larger than the catalogue ({n} items)")
    if fit_sample and n > max(fit_sample, 40 * k):
        # k-means wants ~40 points a centroid (faiss warns below 39): a smaller sample is raised to that
        return _fit_large(x, levels, k, iters, seed, balanced, max(fit_sample, 40 * k))
    codes, books = _fit_levels(x, levels, k, iters, seed, balanced)
    codes, moved = _resolve_collisions(x, codes, books)
    return RQResult(codes, books, moved)


def _fit_levels(
    x: np.ndarray, levels: int, k: int, iters: int, seed: int, balanced: bool
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per level: k-means on the residuals (refined by capped assignment when balanced); the raw
    codes, collisions not yet resolved, and the codebooks."""
    import faiss  # here, not at import: stages that only read SIDs need no faiss

    n, d = x.shape
    residual = x.astype(np.float32).copy()
    codes = np.zeros((n, levels), dtype=np.int64)
    books = []
    for level in range(levels):
        km = faiss.Kmeans(d, k, niter=iters, seed=seed + level, verbose=False, spherical=False)
        km.train(residual)
        centroids = km.centroids.copy()
        if balanced:
            for _ in range(5):
                assign = _balanced_assign(residual, centroids)
                for c in range(k):
                    members = residual[assign == c]
                    if len(members):  # an emptied cluster keeps its centroid (a mean of nothing is NaN)
                        centroids[c] = members.mean(0)
            assign = _balanced_assign(residual, centroids)
        else:
            assign = km.index.search(residual, 1)[1][:, 0]
        codes[:, level] = assign
        books.append(centroids)
        residual = residual - centroids[assign]
    return codes, books


def _fit_large(x: np.ndarray, levels: int, k: int, iters: int, seed: int, balanced: bool, sample: int) -> RQResult:
    rows = np.sort(np.random.default_rng(seed).choice(len(x), sample, replace=False))
    _, books = _fit_levels(x[rows], levels, k, iters, seed, balanced)  # the sample's codes are not kept
    residual = x.astype(np.float32).copy()
    codes = np.zeros((len(x), levels), dtype=np.int64)
    for level, centroids in enumerate(books):
        codes[:, level] = _balanced_assign(residual, centroids) if balanced else _nearest(residual, centroids)
        residual -= centroids[codes[:, level]]
    codes, moved = _resolve_collisions_bulk(x, codes, books)
    return RQResult(codes, books, moved)


def _search(x: np.ndarray, centroids: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's m nearest centroids (exact L2): (squared distances, centroid ids), nearest first."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    return index.search(x, m)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return _search(x, centroids, 1)[1][:, 0].astype(np.int64)


def _resolve_collisions_bulk(x: np.ndarray, codes: np.ndarray, books: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """_resolve_collisions for large catalogues: the nearest item of each full code keeps it; the
    others take free last-level codes under their own prefix (best error first, one prefix at a time,
    vectorised over the prefix's free codes); the few a prefix cannot hold search wider one by one."""
    levels, k = len(books), books[0].shape[0]
    order = np.argsort(((x - reconstruct(codes, books)) ** 2).sum(1), kind="stable")
    _, first = np.unique(codes[order], axis=0, return_index=True)
    keeps = np.zeros(len(x), dtype=bool)
    keeps[order[first]] = True
    out = codes.copy()
    losers = order[~keeps[order]]  # in order of error, as the one-by-one path takes them
    if not len(losers):
        return out, 0
    # prefixes as one integer each; the codes held under a prefix are its winners' last codes
    weights = k ** np.arange(levels - 2, -1, -1, dtype=np.int64)
    prefix_of = codes[:, :-1] @ weights
    held: dict[int, set[int]] = {}
    for p, last in zip(prefix_of[keeps].tolist(), codes[keeps, -1].tolist(), strict=True):
        held.setdefault(p, set()).add(last)
    last_book, overflow = books[-1], []
    by_prefix: dict[int, list[int]] = {}
    for i in losers.tolist():
        by_prefix.setdefault(int(prefix_of[i]), []).append(i)
    for p, items in by_prefix.items():
        taken = held.setdefault(p, set())
        open_ = np.ones(k, dtype=bool)
        open_[list(taken)] = False
        free = np.flatnonzero(open_)
        if not len(free):
            overflow.extend(items)
            continue
        base = reconstruct(codes[items[:1], :-1], books[:-1])[0] if levels > 1 else 0.0
        # (items x free codes) squared errors |r - b|^2 = |r|^2 - 2 r.b + |b|^2, r = x - base
        r, b = x[items] - base, last_book[free]
        err = (r**2).sum(1)[:, None] - 2 * (r @ b.T) + (b**2).sum(1)[None]
        for row, i in enumerate(items):
            if np.isinf(err[row]).all():
                overflow.append(i)
                continue
            j = int(err[row].argmin())
            out[i, -1] = free[j]
            taken.add(int(free[j]))
            err[:, j] = np.inf
    if overflow:  # prefixes that filled up: the general search over wider suffixes
        occupancy = _Occupancy(levels, k)
        placed = np.ones(len(x), dtype=bool)
        placed[overflow] = False
        for code in map(tuple, out[placed].tolist()):
            occupancy.add(code)
        for i in overflow:
            code = _nearest_free(x[i], tuple(codes[i].tolist()), books, occupancy)
            out[i] = code
            occupancy.add(code)
    return out, len(losers)


def _balanced_assign(x: np.ndarray, centroids: np.ndarray, candidates: int = 16) -> np.ndarray:
    """Nearest centroid under a capacity of ceil(n / K) per cluster: (item, centroid) pairs are
    taken in order of distance, skipping full clusters and items already placed. Only each item's
    `candidates` nearest centroids are ranked (memory O(n * candidates), not O(n * K)); the few
    items whose candidates all fill up go to the nearest cluster with room left."""
    n, k = len(x), len(centroids)
    cap = math.ceil(n / k)
    dist, nearest = _search(x, centroids, min(k, candidates))
    order = np.argsort(dist, axis=None, kind="stable")
    # plain Python lists in the loop: numpy scalar indexing would cost several times more per pair
    assign, load, flat_nearest = [-1] * n, [0] * k, nearest.ravel().tolist()
    m = nearest.shape[1]
    placed = 0
    for flat in order.tolist():
        i, c = flat // m, flat_nearest[flat]
        if assign[i] < 0 and load[c] < cap:
            assign[i] = c
            load[c] += 1
            placed += 1
            if placed == n:
                break
    out, load_a = np.asarray(assign, dtype=np.int64), np.asarray(load, dtype=np.int64)
    for i in np.flatnonzero(out < 0):
        free = np.flatnonzero(load_a < cap)
        c = free[((centroids[free] - x[i]) ** 2).sum(1).argmin()]
        out[i] = c
        load_a[c] += 1
    return out


def assign_codes(x: np.ndarray, books: list[np.ndarray], taken: list[tuple[int, ...]]) -> tuple[np.ndarray, int]:
    """Codes for new vectors under fixed codebooks (a growing catalogue): at each level the centroid
    nearest the residual; a code already taken (by the catalogue or an earlier new item) is replaced by
    the nearest free one, as fit_rq_kmeans re-homes its collisions. Returns (codes, how many moved)."""
    levels, k = len(books), books[0].shape[0]
    occupancy = _Occupancy(levels, k)
    for code in taken:
        occupancy.add(tuple(code))
    codes, moved = [], 0
    for v in x.astype(np.float32):
        residual, code = v.copy(), []
        for b in books:
            c = int(((residual - b) ** 2).sum(1).argmin())
            code.append(c)
            residual -= b[c]
        code = tuple(code)
        if code in occupancy.taken:
            if len(occupancy.taken) >= k**levels:
                raise ThinkRecError(
                    f"all {k}^{levels} semantic IDs are taken: re-run tokenize with a larger --codebook-size"
                )
            code = _nearest_free(v, code, books, occupancy)
            moved += 1
        occupancy.add(code)
        codes.append(code)
    return np.asarray(codes, dtype=np.int64).reshape(-1, levels), moved


def reconstruct(codes: np.ndarray, books: list[np.ndarray]) -> np.ndarray:
    return sum(books[level][codes[:, level]] for level in range(len(books)))


def _resolve_collisions(x: np.ndarray, codes: np.ndarray, books: list[np.ndarray]) -> tuple[np.ndarray, int]:
    levels, k = len(books), books[0].shape[0]
    recon_err = ((x - reconstruct(codes, books)) ** 2).sum(1)
    occupancy = _Occupancy(levels, k)
    moved = 0
    out = codes.copy()
    rows = codes.tolist()
    # nearest items claim their code first; the rest are re-homed
    for i in np.argsort(recon_err, kind="stable").tolist():
        code = tuple(rows[i])
        if code in occupancy.taken:
            code = _nearest_free(x[i], code, books, occupancy)
            out[i] = code
            moved += 1
        occupancy.add(code)
    return out, moved


class _Occupancy:
    """Taken full codes, and under every prefix the taken suffixes (as flat indices into the K^m
    suffix grid), so a search can blank them out in one vectorised step."""

    def __init__(self, levels: int, k: int) -> None:
        self.levels, self.k = levels, k
        self.taken: set[tuple[int, ...]] = set()
        self.under: dict[tuple[int, ...], list[int]] = {}

    def add(self, code: tuple[int, ...]) -> None:
        self.taken.add(code)
        for keep in range(self.levels):
            flat = 0
            for c in code[keep:]:
                flat = flat * self.k + c
            self.under.setdefault(code[:keep], []).append(flat)

    def taken_suffixes(self, prefix: tuple[int, ...]) -> list[int]:
        return self.under.get(prefix, [])

    def full(self, prefix: tuple[int, ...]) -> bool:
        return len(self.taken_suffixes(prefix)) >= self.k ** (self.levels - len(prefix))


def _suffix_errors(v: np.ndarray, base: np.ndarray, books: list[np.ndarray]) -> np.ndarray:
    """Squared error of v against base + sum_j books[j][s_j] for every suffix s, as a K^m grid.
    One suffix level is scored directly; deeper ones through the expansion
    |r - sum_j b_j|^2 = |r|^2 + sum_j (|b_j|^2 - 2 r.b_j) + 2 sum_{p<q} b_p.b_q,
    which needs K x K inner products instead of materialising K^m reconstructions."""
    r = v - base
    if len(books) == 1:
        return ((r - books[0]) ** 2).sum(1)
    m, k = len(books), books[0].shape[0]
    grid = np.full([k] * m, float(r @ r), dtype=np.float64)
    for j, b in enumerate(books):
        shape = [1] * m
        shape[j] = k
        grid += ((b**2).sum(1) - 2 * (b @ r)).reshape(shape)
        for p in range(j):
            pair_shape = [1] * m
            pair_shape[p], pair_shape[j] = k, k
            grid += 2 * (books[p] @ b.T).reshape(pair_shape)
    return grid.ravel()


def _nearest_free(
    v: np.ndarray, code: tuple[int, ...], books: list[np.ndarray], occupancy: _Occupancy
) -> tuple[int, ...]:
    levels, k = occupancy.levels, occupancy.k
    # widen the search one level at a time: keep the first `keep` codes, re-choose the rest
    for keep in range(levels - 1, -1, -1):
        prefix = code[:keep]
        if occupancy.full(prefix):
            continue
        base = sum(books[lv][prefix[lv]] for lv in range(keep)) if keep else np.zeros_like(v)
        err = _suffix_errors(v, base, books[keep:])
        err[occupancy.taken_suffixes(prefix)] = np.inf
        # suffixes in lexicographic order: the best free one wins (ties: the first)
        flat = int(err.argmin())
        return prefix + tuple(int(s) for s in np.unravel_index(flat, [k] * (levels - keep)))
    raise ThinkRecError("no free semantic ID left")  # unreachable while k**levels >= n


def codebook_report(x: np.ndarray, res: RQResult) -> dict:
    """The figures of the OneRec report's Table 11: reconstruction loss, per-level codebook
    utilisation and token-distribution entropy (natural log; its maximum is ln K)."""
    k = res.codebooks[0].shape[0]
    recon = reconstruct(res.codes, res.codebooks)
    mse = float(((x - recon) ** 2).sum(1).mean())
    report = {
        "items": int(len(x)),
        "levels": len(res.codebooks),
        "codebook_size": int(k),
        "reconstruction_loss": mse,
        "relative_reconstruction_loss": mse / float((x**2).sum(1).mean()),
        "collisions_resolved": int(res.collisions_resolved),
        "max_entropy": math.log(k),
        "per_level": [],
    }
    for level in range(len(res.codebooks)):
        counts = np.bincount(res.codes[:, level], minlength=k)
        p = counts[counts > 0] / counts.sum()
        report["per_level"].append(
            {
                "level": level + 1,
                "utilisation": float((counts > 0).mean()),
                "entropy": float(-(p * np.log(p)).sum()),
            }
        )
    return report
