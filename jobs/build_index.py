"""Index building: train IVF-PQ for a collection that has outgrown its index, or has none yet.

    python -m jobs.build_index --collection staff --gateway 127.0.0.1:50051 [--min-growth 2] [--force]

The gateway's BuildIndex RPC does the work (`Gallery.train`): it samples the stored
embeddings from the shards, trains IVF-PQ on them, and rebuilds every partition with
the new index while searches go on against the old one; the switch is atomic. This job
decides whether it is due and waits for it. Enrollment runs it as its last step.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from cluster.api import flags
from cluster.api.limits import MIN_FACES_TO_TRAIN
from jobs.commit import gateway_client
from jobs.progress import timed

logger = logging.getLogger(__name__)


def needs_index(face_count: int, trained_on: int, train_threshold: int, min_growth: float) -> bool:
    """Whether to (re)train: the collection has reached its train threshold, and has no index yet or holds
    `min_growth` times the faces its index was trained on.

    Why 2x by default: the gateway retrains on its own only at 8x (cluster/index/tuning.py), when IVF lists are 8x
    longer than at training and nlist has fallen ~3x below the 4*sqrt(n) rule; a bulk load can afford a
    retrain sooner, at 2x, where lists are twice as long and nlist ~1.4x below the rule.
    """
    if face_count < max(train_threshold, MIN_FACES_TO_TRAIN):
        return False
    return trained_on == 0 or face_count >= min_growth * trained_on


@dataclass
class BuildIndexResult:
    collection: str
    built: bool
    reason: str
    face_count: int
    trained_on: int
    nlist: int
    pq_m: int
    pq_bits: int  # 4 (fast-scan) or 8; 0 in the exact state
    elapsed_s: float


def build_index(collection: str, gateway: str = "127.0.0.1:50051", min_growth: float = 2.0, force: bool = False,
                timeout_s: float = 3600.0) -> BuildIndexResult:
    """Trains and rolls out IVF-PQ for a collection when it is due (see `needs_index`).

    Args:
        collection: the collection id.
        gateway: host:port of the gallery.v1 gateway.
        min_growth: retrain once the collection holds this many times the faces its index was trained on, >= 1.
        force: train now whatever the growth (the collection still needs 256 faces).
        timeout_s: how long to wait for a training in progress and then for this one.

    Returns:
        Whether an index was built, why (not), and the collection's index afterwards.

    Raises:
        ValueError: min_growth < 1.
        grpc.RpcError: NOT_FOUND (no such collection), FAILED_PRECONDITION (force under 256 faces), …

    Example:
        >>> build_index("staff", gateway="127.0.0.1:50051").built
        True
    """
    if min_growth < 1:
        raise ValueError(f"min_growth must be >= 1, got {min_growth}")
    start = time.monotonic()
    with gateway_client(gateway, timeout_s=60.0) as client:
        d = client.describe(collection)
        while d.training and time.monotonic() - start < timeout_s:  # the gateway is training by itself
            time.sleep(1.0)
            d = client.describe(collection)
        if not force and not needs_index(d.face_count, d.trained_on, d.train_threshold, min_growth):
            reason = (f"{d.face_count} faces, index trained on {d.trained_on}, train threshold "
                      f"{d.train_threshold}, min growth {min_growth}: not due")
            logger.info("%s: %s", collection, reason)
            return BuildIndexResult(collection, False, reason, d.face_count, d.trained_on, d.nlist, d.pq_m,
                                    d.pq_bits, time.monotonic() - start)
        reason = "forced" if force else ("no index yet" if not d.trained_on else
                                         f"grown from {d.trained_on} to {d.face_count} faces")
        with timed(f"build index of {collection} ({d.face_count} faces)"):
            d = client.build_index(collection, timeout_s=max(timeout_s - (time.monotonic() - start), 1.0))
    return BuildIndexResult(collection, True, reason, d.face_count, d.trained_on, d.nlist, d.pq_m, d.pq_bits,
                            time.monotonic() - start)


def main(argv: list[str] | None = None) -> BuildIndexResult:
    result = flags.run(build_index, argv, "python -m jobs.build_index")
    print(json.dumps(asdict(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
