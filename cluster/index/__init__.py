"""The index stage: one partition's FAISS index, the pure maths around it (tuning rules, top-k merge,
calibration, vector checks) and IVF-PQ training. No Ray, no gRPC, no object store."""
