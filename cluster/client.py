"""A numpy-friendly client of gallery.v1, for jobs, benchmarks and scripts.

Example:
    >>> with GalleryClient("127.0.0.1:50051") as client:
    ...     client.create_collection("staff", dimension=512)
    ...     client.add("staff", ["alice", "bob"], xb)
    ...     D, ids = client.search("staff", xq, k=5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
import numpy as np
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc

from cluster.api import convert
from cluster.api.limits import MAX_MESSAGE_BYTES


class GalleryClient:
    """Blocking client; `metadata` (e.g. an authorization header) goes with every call."""

    def __init__(self, address: str, *, timeout_s: float = 60.0, metadata: Sequence[tuple[str, str]] = ()):
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self.stub = gallery_pb2_grpc.GalleryStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = tuple(metadata)

    def __enter__(self) -> GalleryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request):
        return method(request, timeout=self.timeout_s, metadata=self.metadata)

    def create_collection(self, collection_id: str, *, dimension: int = 0, train_threshold: int = 0
                          ) -> pb.CollectionDescription:
        return self._call(self.stub.CreateCollection, pb.CreateCollectionRequest(
            collection_id=collection_id, dimension=dimension, train_threshold=train_threshold)).collection

    def describe(self, collection_id: str) -> pb.CollectionDescription:
        return self._call(self.stub.DescribeCollection, pb.DescribeCollectionRequest(collection_id=collection_id))

    def add(self, collection_id: str, face_ids: Sequence[str], xb: np.ndarray, *,
            external_image_ids: Sequence[str] | None = None, metadata: Sequence[Mapping[str, str]] | None = None,
            skip_existing: bool = False) -> pb.AddEmbeddingsResponse:
        """Enrolls (n, d) embeddings under the given ids."""
        faces = [convert.new_face(face_id, x, external_image_id=external_image_ids[i] if external_image_ids else "",
                                  metadata=metadata[i] if metadata else None)
                 for i, (face_id, x) in enumerate(zip(face_ids, xb))]
        return self._call(self.stub.AddEmbeddings, pb.AddEmbeddingsRequest(
            collection_id=collection_id, faces=faces, skip_existing=skip_existing))

    def search(self, collection_id: str, xq: np.ndarray, k: int, *, nprobe: int = 0,
               min_similarity: float | None = None, purpose: str = "") -> tuple[np.ndarray, list[list[str]]]:
        """Returns D (nq, k) similarities (-inf where fewer) and the face ids, like a faiss index."""
        response = self.search_raw(collection_id, xq, k, nprobe=nprobe, min_similarity=min_similarity,
                                   purpose=purpose)
        D = np.full((len(xq), k), -np.inf, dtype=np.float32)
        ids = []
        for q, result in enumerate(response.results):
            D[q, :len(result.candidates)] = [c.similarity for c in result.candidates]
            ids.append([c.face.face_id for c in result.candidates])
        return D, ids

    def search_raw(self, collection_id: str, xq: np.ndarray, k: int, *, nprobe: int = 0,
                   min_similarity: float | None = None, purpose: str = "") -> pb.SearchByEmbeddingResponse:
        """The full response, with face records and false-match estimates."""
        queries = [convert.embedding(x) for x in np.atleast_2d(xq)]
        request = pb.SearchByEmbeddingRequest(collection_id=collection_id, queries=queries, k=k, nprobe=nprobe,
                                              purpose=purpose)
        if min_similarity is not None:
            request.min_similarity = min_similarity
        return self._call(self.stub.SearchByEmbedding, request)

    def delete_faces(self, collection_id: str, face_ids: Sequence[str]) -> pb.DeleteFacesResponse:
        return self._call(self.stub.DeleteFaces, pb.DeleteFacesRequest(collection_id=collection_id,
                                                                       face_ids=list(face_ids)))
