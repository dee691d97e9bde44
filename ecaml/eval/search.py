"""Nearest-neighbour search by cosine similarity: the one place where the search method is chosen.

Everything here takes float32 vectors that are already L2-normalised (``ecaml.eval.metrics.l2_normalise``),
so an inner product is a cosine.

* ``exact_topk`` is the exact search: the similarity matrix is computed block by block of
  queries (a matrix product, on the GPU when there is one) and each block is reduced to its
  top ``k`` by a partial sort (``torch.topk``). Its cost is the matrix product plus a pass
  over each row, so it barely grows with ``k`` (a faiss flat index keeps a heap of ``k``
  per query and slows down by the thousand). Ties are broken by the lower gallery index,
  so the result is defined exactly, as a stable sort of each row would give it.
* ``similarity_blocks`` yields those blocks, for callers (``ecaml.eval.metrics``) that need more
  from a row than its top ``k``.
* ``build_index`` returns a ``SearchIndex``: exact up to ``approximate_above`` vectors, and
  above that an approximate faiss index (HNSW, or IVF), whose recall against the exact
  search ``measure_recall`` measures on a sample of queries.

The exact search was measured against faiss ``IndexFlatIP`` (``benchmarks/eval_speed.py``,
2 CPU cores): with batches of queries the blocked product wins at every ``k`` (1,024 queries
on 15,000 x 512: 4.9x faster at k = 10, 2.2x at k = 1000), and for a single query the two are
within a tenth of a millisecond, so one exact path serves both; faiss keeps the approximate
indexes, where it has no rival here.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import faiss
import numpy as np
import torch

from ecaml.eval import prefilter

logger = logging.getLogger(__name__)

# Similarity entries (float32) held per block: 2^25 = 128 MiB, enough rows for the
# matrix product to run at full speed, few enough to fit next to a model in memory.
BLOCK_ENTRIES = 1 << 25
# Galleries larger than this get an approximate index unless told otherwise; an exact
# evaluation above it costs N^2 d multiply-adds, about an hour on a 2-core CPU at 10^6 x 128.
DEFAULT_APPROXIMATE_ABOVE = 1_000_000
APPROXIMATE_KINDS = ("hnsw", "ivf")
# Queries searched both ways to measure an approximate index's recall.
RECALL_SAMPLE = 1000
# Odd-even passes that order runs of equal similarities by index before a row is re-sorted instead.
_TIE_PASSES = 16
# Partial sorts this deep or deeper go through numpy on the CPU (see _sorted_top), this many rows at a time
# (their int64 keys stay within a few MiB of cache).
_NUMPY_SELECT_FROM = 512
_SELECT_ROWS = 16


@functools.lru_cache(maxsize=1)
def default_device() -> torch.device:
    """CUDA when there is a GPU (the matrix products and partial sorts run there), else the CPU.

    Asked once per process: without a driver, ``torch.cuda.is_available()`` costs milliseconds a call.
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def similarity_blocks(
    query: np.ndarray,
    gallery: np.ndarray,
    device: torch.device | None = None,
    block_entries: int = BLOCK_ENTRIES,
    gallery_tensor: torch.Tensor | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, query[rows] @ gallery.T)`` block by block of query rows, as float32 tensors on ``device``;
    each block is overwritten by the next (one reused buffer), so a caller keeps what it needs before moving on."""
    device = device or default_device()
    gallery_on_device = gallery_tensor if gallery_tensor is not None else _tensor(gallery, device)
    rows_per_block = max(1, block_entries // max(1, len(gallery)))
    output = product_buffer(min(rows_per_block, len(query)), len(gallery), device)
    for start in range(0, len(query), rows_per_block):
        rows = slice(start, min(start + rows_per_block, len(query)))
        yield rows, torch.mm(_tensor(query[rows], device), gallery_on_device.T, out=output[: rows.stop - rows.start])


def product_buffer(rows: int, columns: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One output for a loop of blocked matrix products, each block overwriting the last (``out=`` its first rows).

    A fresh 128 MiB result per block pays for its pages again every time: reusing one took a 554 x 512 by
    512 x 60,502 product from 97 to 116 GFLOPS on 2 cores (benchmarks/README.md, "Importing an SOP-sized set").
    """
    return torch.empty((max(1, rows), columns), dtype=dtype, device=device)


def exact_topk(
    query: np.ndarray,
    gallery: np.ndarray,
    k: int,
    self_rows: np.ndarray | None = None,
    device: torch.device | None = None,
    block_entries: int = BLOCK_ENTRIES,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` gallery rows of every query row, most similar first, ties by lower index.

    ``self_rows[i]`` (optional) is a gallery row that query ``i`` must not list (itself,
    when the query set is the gallery); other rows with the same vector still count.
    Returns ``(similarities [Nq, k] float32, indices [Nq, k] int64)``.
    """
    available = len(gallery) - (0 if self_rows is None else 1)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} is out of range: the gallery offers {available} neighbours per query")
    similarities = np.empty((len(query), k), dtype=np.float32)
    indices = np.empty((len(query), k), dtype=np.int64)
    for rows, block in similarity_blocks(query, gallery, device, block_entries):
        if self_rows is not None:
            mask_self(block, self_rows[rows])
        values, positions = topk_with_index_ties(block, k)
        similarities[rows] = values.cpu().numpy()
        indices[rows] = positions.cpu().numpy()
    return similarities, indices


def mask_self(block: torch.Tensor, self_rows: np.ndarray) -> None:
    """Set each row's own gallery column to -inf, so it ranks after every real similarity (in [-1, 1])."""
    row_positions = torch.arange(len(self_rows), device=block.device)
    block[row_positions, torch.as_tensor(self_rows, device=block.device)] = -torch.inf


def topk_with_index_ties(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of each row, best first, where equal values go in ascending column order.

    ``torch.topk`` returns the right values but leaves the order of equal ones, and which of
    them make the cut at the k-th place, unspecified. One extra place tells whether a row's
    cut falls inside a run of equal values; only such rows (and rows with equal values
    inside their list) are redone, so data without ties pays nothing.
    """
    depth = min(k + 1, block.shape[1])
    values, positions, ties_ordered = _sorted_top(block, depth)
    if ties_ordered:  # views, not copies: copying two [rows, k] tables took a tenth of a deep-R search
        return values[:, :k], positions[:, :k]
    if depth > k:
        cut_in_tie = values[:, k] == values[:, k - 1]
    else:
        cut_in_tie = torch.zeros(len(block), dtype=torch.bool, device=block.device)
    values, positions = values[:, :k].contiguous(), positions[:, :k].contiguous()
    for row in torch.nonzero(cut_in_tie).flatten().tolist():
        values[row], positions[row] = _row_topk_lowest_tied(block[row], values[row], positions[row])
    has_ties = (values[:, 1:] == values[:, :-1]).any(dim=1) if k > 1 else cut_in_tie
    tied_rows = torch.nonzero(has_ties).flatten()
    if len(tied_rows):
        values[tied_rows], positions[tied_rows] = _order_by_value_then_index(values[tied_rows], positions[tied_rows])
    return values, positions


def _sorted_top(block: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Each row's ``depth`` largest values, in descending order, with their columns, and whether equal
    values are already in ascending column order (including which of them made the cut).

    On the CPU with deep lists (MAP@R with R in the thousands), each value and its column are packed
    into one int64 key that orders by value, then by lower column (``ordered_keys``), so that numpy's
    introselect and sort work on plain integers, and ties come out exactly as the index rule wants
    them, with nothing left to repair. Rows first go through ``ecaml.eval.prefilter``: only the entries
    above a sampled threshold are keyed (~1.5 x depth of them instead of the full width; the same result,
    and rows where too few pass take the full path). Row chunks run in parallel threads (numpy releases the GIL).
    This replaced an ``argpartition`` of the values (its indirect comparisons took half of a deep-R
    evaluation's time, ``benchmarks/README.md``); shallow lists and GPUs keep ``torch.topk``.
    """
    if block.device.type != "cpu" or depth < _NUMPY_SELECT_FROM or depth >= block.shape[1]:
        values, positions = torch.topk(block, depth, dim=1, largest=True, sorted=True)
        return values, positions, False
    array = block.numpy()
    values = np.empty((len(array), depth), dtype=np.float32)
    positions = np.empty((len(array), depth), dtype=np.int64)

    plan = prefilter.sample_plan(array.shape[1], depth)

    def top_of(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = np.partition(keys, keys.shape[1] - depth, axis=1)[:, -depth:]
        top.sort(axis=1)
        return _unpacked_keys(top[:, ::-1], keys.shape[1])

    def select(rows: slice) -> None:
        for start in range(rows.start, rows.stop, _SELECT_ROWS):
            part = slice(start, min(start + _SELECT_ROWS, rows.stop))
            rest = np.arange(part.start, part.stop)
            if plan is not None:  # narrow each row to the entries above a sampled threshold (exact: prefilter)
                chunk = array[part]
                kept, narrow, columns, slots, counts = prefilter.narrowed(chunk, prefilter.thresholds(chunk, plan),
                                                                          depth)
                if len(kept):
                    keys = np.full((len(kept), int(counts.max())), np.iinfo(np.int64).min)  # padding ranks last
                    keys.reshape(-1)[slots] = ordered_keys(narrow, columns)
                    values[start + kept], positions[start + kept] = top_of(keys)
                    rest = np.delete(rest, kept)
            if len(rest) == part.stop - part.start:
                values[part], positions[part] = top_of(ordered_keys(array[part]))
            elif len(rest):
                values[rest], positions[rest] = top_of(ordered_keys(array[rest]))

    threads = max(1, min(torch.get_num_threads(), len(array)))
    chunk = -(-len(array) // threads)
    chunks = [slice(start, min(start + chunk, len(array))) for start in range(0, len(array), chunk)]
    if len(chunks) == 1:
        select(chunks[0])
    else:
        list(_select_pool(len(chunks)).map(select, chunks))
    return torch.from_numpy(values), torch.from_numpy(positions), True


def ordered_keys(similarities: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """int64 keys, one per entry, whose order is (value, then lower column first): the float32's bits made
    monotonic in the high 32 bits, 2^32 - 1 - column in the low ones (``columns``: each entry's own column,
    for narrowed rows; default, its position)."""
    bits = (similarities + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0, which compares equal
    monotonic = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
    if columns is None:
        columns = np.arange(similarities.shape[1], dtype=np.int64)
    return (monotonic << 32) + (np.int64(0xFFFFFFFF) - columns)


def _unpacked_keys(keys: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 values, int64 columns) of ``ordered_keys``' keys."""
    monotonic = (keys >> 32).astype(np.int32)
    bits = np.where(monotonic < 0, monotonic ^ np.int32(0x7FFFFFFF), monotonic)
    return bits.view(np.float32), np.int64(0xFFFFFFFF) - (keys & np.int64(0xFFFFFFFF))


@functools.lru_cache(maxsize=4)
def _select_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ecaml-select")


def _row_topk_lowest_tied(row: torch.Tensor, values: torch.Tensor, positions: torch.Tensor):
    """One row's top k where the last value is tied beyond the cut: keep the lowest-index tied columns."""
    last = values[-1]
    above = values > last
    tied = torch.nonzero(row == last).flatten()  # ascending column order
    needed = len(values) - int(above.sum())
    return (torch.cat([values[above], values.new_full((needed,), float(last))]),
            torch.cat([positions[above], tied[:needed]]))


def _order_by_value_then_index(values: torch.Tensor, positions: torch.Tensor):
    """Rows sorted by value (descending) with runs of equal values put in ascending position order.

    Runs of equal float32 similarities are short (a few colliding values, or duplicates),
    so odd-even transposition inside runs settles them in a few vectorised passes, where a
    full re-sort would cost more than the partial sort itself when k is in the thousands.
    Rows still unsettled after ``_TIE_PASSES`` passes (long runs: many duplicates) are re-sorted.
    """
    k = values.shape[1]
    for _ in range(_TIE_PASSES):
        swapped = False
        for first in (0, 1):
            left, right = slice(first, k - 1, 2), slice(first + 1, k, 2)
            swap = (values[:, left] == values[:, right]) & (positions[:, left] > positions[:, right])
            if swap.any():
                low, high = positions[:, left], positions[:, right]
                positions[:, left], positions[:, right] = torch.where(swap, high, low), torch.where(swap, low, high)
                swapped = True
        if not swapped:
            return values, positions
    unsettled = ((values[:, 1:] == values[:, :-1]) & (positions[:, 1:] < positions[:, :-1])).any(dim=1)
    rows = torch.nonzero(unsettled).flatten()
    positions[rows], by_position = torch.sort(positions[rows], dim=1)
    ordered = values[rows].gather(1, by_position)
    values[rows], by_value = torch.sort(ordered, dim=1, descending=True, stable=True)
    positions[rows] = positions[rows].gather(1, by_value)
    return values, positions


# --- index choice -------------------------------------------------------------


@dataclass
class RecallReport:
    """How much of the exact top ``k`` an approximate index finds, on ``queries`` sampled queries."""

    kind: str
    size: int
    k: int
    queries: int
    recall: float

    def __str__(self) -> str:
        return (f"approximate search ({self.kind}, {self.size:,} vectors): it finds {self.recall:.2%} of the exact "
                f"top {self.k} (measured on {self.queries:,} queries)")


class SearchIndex:
    """Cosine search over fixed unit vectors: exact (blocked products) or approximate (a faiss index).

    ``search(queries, k, self_rows=None)`` returns ``(similarities, indices)`` like
    ``exact_topk``; an approximate index may miss true neighbours and pads rows it cannot
    fill with index -1 and similarity -inf.
    """

    def __init__(self, vectors: np.ndarray, kind: str = "exact", faiss_index: faiss.Index | None = None,
                 device: torch.device | None = None):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.kind = kind
        self.faiss_index = faiss_index
        self.device = device

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def is_exact(self) -> bool:
        return self.kind == "exact"

    def search(self, queries: np.ndarray, k: int, self_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.is_exact:
            return exact_topk(queries, self.vectors, k, self_rows, self.device)
        available = len(self) - (0 if self_rows is None else 1)
        if not 1 <= k <= available:
            raise ValueError(f"k={k} is out of range: the gallery offers {available} neighbours per query")
        return _approximate_search(self.faiss_index, queries, k, self_rows)

    def measure_recall(self, k: int = 10, sample: int = RECALL_SAMPLE, seed: int = 0) -> RecallReport:
        """Recall of this index against the exact search: the share of each sampled row's exact top ``k``
        (itself excluded) that ``search`` returns. 1.0 for an exact index."""
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(self), size=min(sample, len(self)), replace=False))
        k = min(k, len(self) - 1)
        _, found = self.search(self.vectors[rows], k, self_rows=rows)
        _, truth = exact_topk(self.vectors[rows], self.vectors, k, rows, self.device)
        hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, truth))
        return RecallReport(self.kind, len(self), k, len(rows), hits / truth.size)


def build_index(
    vectors: np.ndarray,
    approximate_above: int | None = DEFAULT_APPROXIMATE_ABOVE,
    kind: str = "hnsw",
    device: torch.device | None = None,
    seed: int = 0,
) -> SearchIndex:
    """A ``SearchIndex`` over unit ``vectors``: exact up to ``approximate_above`` vectors (None: always),
    an approximate faiss index of ``kind`` ("hnsw" or "ivf") above it.

    HNSW: 32 links per vector, efConstruction 80, efSearch raised per search to at least
    2k. IVF: sqrt(N)*4 lists trained on at most 256 points a list, 32 probed per search.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if approximate_above is None or len(vectors) <= approximate_above:
        return SearchIndex(vectors, "exact", device=device)
    if kind not in APPROXIMATE_KINDS:
        raise ValueError(f"unknown approximate index {kind!r}; choose one of {', '.join(APPROXIMATE_KINDS)}")
    dim = vectors.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
    else:
        lists = max(1, int(4 * np.sqrt(len(vectors))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = np.random.default_rng(seed).permutation(len(vectors))[: 256 * lists]
        index.train(vectors[np.sort(sample)])
        index.nprobe = min(32, lists)
    index.add(vectors)
    return SearchIndex(vectors, kind, index, device)


def _approximate_search(index: faiss.Index, queries: np.ndarray, k: int, self_rows: np.ndarray | None):
    depth = k + (0 if self_rows is None else 1)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(index.hnsw.efSearch, 2 * depth)
    similarities, indices = index.search(queries, depth)
    similarities[indices < 0] = -np.inf
    if self_rows is None:
        return similarities, indices
    is_self = indices == self_rows[:, None]
    # A row that did not list itself drops its last entry instead, to keep k.
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return similarities[keep].reshape(-1, k), indices[keep].reshape(-1, k)


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
