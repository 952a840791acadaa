"""gallery-search: sharded face-gallery search on Ray and FAISS behind a gRPC gateway."""

import os

# Every gallery process (gateway, shard and face workers, jobs) imports this package before FAISS, whose
# OpenMP runtime reads the policy once, when it loads. The default lets idle OpenMP threads spin for
# milliseconds after each parallel region, which steals the CPU from small searches: shard workers search a
# few queries per call on several threads. Passive threads sleep instead (figures: benchmarks/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
