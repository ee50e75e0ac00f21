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
    x: np.ndarray, levels: int, k: int, iters: int = 50, seed: int = 0, balanced: bool = True
) -> RQResult:
    n, d = x.shape
    if k**levels < n:
        raise ThinkRecError(f"codebook_size {k} with {levels} levels gives {k**levels} codes for {n} items")
    if n < k:
        raise ThinkRecError(f"codebook_size {k} is larger than the catalogue ({n} items)")
    residual = x.astype(np.float32).copy()
    codes = np.zeros((n, levels), dtype=np.int64)
    books = []
    for level in range(levels):
        import faiss  # here, not at import: stages that only read SIDs need no faiss

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
    codes, moved = _resolve_collisions(x, codes, books)
    return RQResult(codes, books, moved)


def _balanced_assign(x: np.ndarray, centroids: np.ndarray, candidates: int = 16) -> np.ndarray:
    """Nearest centroid under a capacity of ceil(n / K) per cluster: (item, centroid) pairs are
    taken in order of distance, skipping full clusters and items already placed. Only each item's
    `candidates` nearest centroids are ranked (memory O(n * candidates), not O(n * K)); the few
    items whose candidates all fill up go to the nearest cluster with room left."""
    n, k = len(x), len(centroids)
    cap = math.ceil(n / k)
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    dist, nearest = index.search(x, min(k, candidates))
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
