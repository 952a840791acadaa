"""gallery-search: sharded face-gallery search on Ray and FAISS behind a gRPC gateway."""
