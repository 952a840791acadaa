"""The gateway stage: collections and their two-phase writes, the search path (batching, coarse
assignment, fan-out, merge, calibration), background maintenance and the face service. Plain Python
over shard workers; no gRPC."""
