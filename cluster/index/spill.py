"""Spilled assignment: a face near the border of its nearest list is stored in the next nearest lists too, so
a search finds it through any of them.

An IVF search misses a true neighbour whose list it did not probe. On 1M clustered 512-d faces in 4,096
lists, storing every face in two lists held 0.975 of each probe's true top-10 within 31k codes scanned a
query, where one list needed 55k, and 0.99 within 78k against 109k; storing only the half of the faces
nearest a border in two held the same shares within 23k and 59k (benchmarks/README.md, `spill.py`). At the
list size of a 10M collection's partitions (2.5M faces in 2,048 lists) nearly every face is that near a
border, and a third list for the faces whose third nearest is nearly as near as the first held 0.975 within
272k codes where every face in two lists needed 391k, 0.95 within 190k against 234k and 0.99 within 544k
against 625k. The price is more codes and ids (24 bytes each at PQ32x4fs) and more lists found per add,
which the same top-3 search gives.

Only fast-scan (4-bit) indexes spill, the CPU form, whose scan is the cost of a search at scale; GPU
indexes (8-bit IVF-PQ) keep one list. faiss's fast-scan IVF adds only to the nearest list: its `add_core`
with given lists writes flat codes into block-packed lists and corrupts them, so `add` encodes the codes
itself and writes them into each list in faiss's block layout through the lists' code packer. Searches ask
for `COPIES` times the candidates and keep the first copy of each (`first_unique`): the copies of a face
carry the same code, so they score alike.
"""

from __future__ import annotations

import faiss
import numpy as np

# A face gets its second nearest list too when that list's centroid is within SPILL_RATIOS[0] of the nearest's
# squared distance, and its third when within SPILL_RATIOS[1]: faces on the border between lists, which a query
# in the neighbouring list misses. On 1M 512-d faces in 4,096 lists, 1.12 gave half of them a second list and
# reached the coverage@10 of giving every face one at each nprobe measured (within 0.0002) with 25% fewer codes:
# 23k codes a query for 0.975 where every face spilled needed 31k. At a 10M partition's list size (2.5M faces in
# 2,048 lists) 1.12 gave 95% a second list, and a third within 1.06 (84% of faces) needed the fewest codes for
# each coverage from 0.95 to 0.99 among third-list ratios of 1.02 to 1.12 and every face (benchmarks/README.md).
SPILL_RATIOS = (1.12, 1.06)
COPIES = 1 + len(SPILL_RATIOS)  # lists a fast-scan index stores a face in, at most


def spills(index: faiss.Index) -> bool:
    """Whether faces of this index may be stored in several lists: IVF fast-scan indexes."""
    return isinstance(faiss.downcast_index(index), faiss.IndexIVFFastScan)


def add(index: faiss.Index, x: np.ndarray, labels: np.ndarray) -> None:
    """Adds float32 vectors x with their labels: to their nearest list, and to the next nearest ones for faces
    near their borders (`near_border`), for a fast-scan index; else as `add_with_ids` does."""
    if not spills(index) or not len(x):
        index.add_with_ids(x, labels)
        return
    ivf = faiss.downcast_index(index)
    scores, nearest = ivf.quantizer.search(x, COPIES)
    stored = np.column_stack([np.ones(len(x), bool), near_border(x, scores, nearest)])  # (n, COPIES)
    copy, rows = np.nonzero(stored.T)  # by copy: every face's nearest list first, then the spilled ones
    lists = nearest[rows, copy]
    if ivf.by_residual:  # a code depends on its list
        codes = _encode(ivf, np.ascontiguousarray(x[rows], dtype=np.float32), lists)
    else:  # one code serves every list: encoding it once saves copying and encoding faces again
        codes = _encode(ivf, np.ascontiguousarray(x, dtype=np.float32), nearest[:, 0])[rows]
    _append(ivf, codes, labels[rows].astype(np.int64), lists)


def near_border(x: np.ndarray, scores: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """(n, COPIES - 1): whether each face is also stored in its 2nd, 3rd... nearest list: where that list's
    centroid is within `SPILL_RATIOS` of the nearest's squared distance. Centroids are unit vectors (training.py
    trains them spherical), so ||x - c||^2 = ||x||^2 + 1 - 2 <x, c>, from the scores the quantizer gave."""
    sq_norms = np.einsum("ij,ij->i", x, x)[:, None]
    squared = sq_norms + 1 - 2 * scores
    return ((nearest[:, 1:] >= 0) & (nearest[:, 1:] != nearest[:, :1])
            & (squared[:, 1:] <= np.array(SPILL_RATIOS) * np.maximum(squared[:, :1], 0)))


def _encode(ivf: faiss.IndexIVF, x: np.ndarray, lists: np.ndarray) -> np.ndarray:
    codes = np.empty((len(x), ivf.code_size), dtype=np.uint8)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    ivf.encode_vectors(len(x), faiss.swig_ptr(x), faiss.swig_ptr(lists), faiss.swig_ptr(codes), False)
    return codes


def _append(ivf: faiss.IndexIVF, codes: np.ndarray, labels: np.ndarray, lists: np.ndarray) -> None:
    """Appends each code[i] with labels[i] to list lists[i] of a fast-scan IVF index.

    Written into each list's own buffers after `resize`, not through `BlockInvertedLists.add_entries`, which
    copies whole blocks from the start of the list when the list ends on a block boundary, writing past the
    list's buffer once it holds a block or more."""
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    packer, per_block, block_bytes = invlists.packer, invlists.n_per_block, invlists.block_size
    order = np.argsort(lists, kind="stable")
    codes, ids = codes[order], labels[order]
    touched, first, count = np.unique(lists[order], return_index=True, return_counts=True)
    for list_no, at, n in zip(touched.tolist(), first.tolist(), count.tolist()):
        old = invlists.list_size(list_no)
        invlists.resize(list_no, old + n)
        faiss.rev_swig_ptr(invlists.get_ids(list_no), old + n)[old:] = ids[at:at + n]
        blocks = faiss.rev_swig_ptr(invlists.get_codes(list_no), -(-(old + n) // per_block) * block_bytes)
        head = min(n, -old % per_block)  # codes that complete the list's last, partly filled block
        for i in range(head):
            packer.pack_1_c(faiss.swig_ptr(codes[at + i]), old + i, faiss.swig_ptr(blocks))
        rest = np.zeros((-(-(n - head) // per_block) * per_block, ivf.code_size), dtype=np.uint8)
        rest[:n - head] = codes[at + head:at + n]
        first_block = (old + head) // per_block
        for b in range(len(rest) // per_block):  # whole blocks, the last padded with zero codes
            packer.pack_all(faiss.swig_ptr(rest[b * per_block:]),
                            faiss.swig_ptr(blocks[(first_block + b) * block_bytes:]))
    ivf.ntotal += len(codes)


def first_unique(labels: np.ndarray, depth: int) -> np.ndarray:
    """Each row's labels in their order without repeats (the first copy of each kept), cut to `depth`, -1
    after the last."""
    order = np.argsort(labels, axis=1, kind="stable")  # a label's first copy sorts before its second
    ranked = np.take_along_axis(labels, order, axis=1)
    repeated_sorted = np.zeros(labels.shape, dtype=bool)
    repeated_sorted[:, 1:] = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)
    repeated = np.empty_like(repeated_sorted)
    np.put_along_axis(repeated, order, repeated_sorted, axis=1)
    kept_first = np.argsort(repeated, axis=1, kind="stable")
    return np.take_along_axis(np.where(repeated, -1, labels), kept_first, axis=1)[:, :depth]
