"""What the gateway sends a shard worker to search, and what comes back: pickled over the worker's channel.

The gateway imports this module, not the worker: it needs the messages, never the worker's process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Concurrency group of ShardWorker's long calls (build, compact, sample): one at a time, beside searches and writes.
MAINTENANCE = "maintenance"
# The concurrency group of the supervisor's liveness probes (`ShardWorker.ready`): in the default group a
# probe waited behind writes that waited for a partition's lock during a long recall measurement, the
# worker was taken for dead, and a 10M-face ingest was refused (benchmarks/scale.py).
HEALTH = "health"


@dataclass
class SearchRequest:
    """The same for every worker; each searches the partitions of the collection it holds."""

    collection_id: str
    xq: np.ndarray  # (nq, d) normalised
    k: int
    version: int  # index version the coarse assignment was made with; 0: exact
    Iq: np.ndarray | None  # (nq, nprobe) IVF lists to scan
    Dq: np.ndarray | None
    rerank_k: int  # PQ candidates each partition re-ranks
    ids_only: bool = False  # the reply's records are face ids (str), not FaceRecords: a lean search


@dataclass
class SearchReply:
    D: np.ndarray
    I: np.ndarray
    # (nq, k) objects aligned with I: the FaceRecord of each label, its face id (str) alone when the request
    # was ids_only, None where I is -1. A candidate shown for several queries is one object, pickled once.
    records: np.ndarray
    search_s: float = 0.0  # the worker's own time on the request, for the gateway's per-shard latency
