"""A numpy-friendly client of gallery.v1, for jobs, benchmarks and scripts.

Example:
    >>> with GalleryClient("127.0.0.1:50051") as client:
    ...     client.create_collection("staff", dimension=512)
    ...     client.add("staff", ["alice", "bob"], xb)
    ...     D, ids = client.search("staff", xq, k=5, purpose="door 3 alarm", case_id="case-7")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
import numpy as np
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc

from cluster.api import convert
from cluster.api.limits import MAX_MESSAGE_BYTES

# (first, longest) wait in ms before a channel retries a gateway it could not reach; gRPC's own: 1 s, 120 s.
RECONNECT_BACKOFF_MS = (100, 5_000)


class GalleryClient:
    """Blocking client of every RPC the jobs and benchmarks call; `metadata` (e.g. an authorization header) goes
    with every call. Errors are the calls' `grpc.RpcError`, with the status codes gallery.proto states.

    Args:
        address: host:port of a gallery.v1 gateway.
        token: the caller's bearer token (`gallery token create`; `gallery serve` writes the admin's).
        timeout_s: deadline of each call, unless the method takes its own.
        metadata: more gRPC metadata sent with every call.
        credentials: TLS credentials (`grpc.ssl_channel_credentials`) for a gateway serving TLS; None: plaintext.

    Attributes:
        channel: the gRPC channel, e.g. for `grpc.channel_ready_future`.
    """

    def __init__(self, address: str, *, token: str = "", timeout_s: float = 60.0,
                 metadata: Sequence[tuple[str, str]] = (), credentials: grpc.ChannelCredentials | None = None):
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   # A channel that found no one serving holds its reconnects back, 1 s at first by default:
                   # that was most of what a client saw of a writer's failover, where the standby served
                   # 0.1 s after the kill (benchmarks/failover.py). Retries start sooner, and a gateway that
                   # comes back after a long outage is found within 5 s.
                   ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
                   ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1])]
        self.channel = (grpc.secure_channel(address, credentials, options=options) if credentials
                        else grpc.insecure_channel(address, options=options))
        self._stub = gallery_pb2_grpc.GalleryStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = tuple(metadata) + ((("authorization", f"Bearer {token}"),) if token else ())

    def __enter__(self) -> GalleryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self.channel.close()

    def _call(self, method, request, timeout_s: float | None = None):
        return method(request, timeout=self.timeout_s if timeout_s is None else timeout_s, metadata=self.metadata)

    # ---- collections -------------------------------------------------------

    def create_collection(self, collection_id: str, *, dimension: int = 0, train_threshold: int = 0,
                          embedding_model: str = "", default_fpir: float = 0.0, replicas: int = 0,
                          target_recall: float = 0.0) -> pb.CollectionDescription:
        """Creates an empty collection; dimension 0 is a face collection of `embedding_model` ("" for the server's
        default model), train_threshold 0 the server's default, default_fpir 0 the default target FPIR of its kind
        (0.01 for faces, none for raw embeddings), replicas 0 every copy the server keeps of its shard workers,
        target_recall 0 the default recall@10 target (0.99)."""
        return self._call(self._stub.CreateCollection, pb.CreateCollectionRequest(
            collection_id=collection_id, dimension=dimension, train_threshold=train_threshold,
            embedding_model=embedding_model, default_fpir=default_fpir, replicas=replicas,
            target_recall=target_recall)).collection

    def describe(self, collection_id: str) -> pb.CollectionDescription:
        """The collection's size, index state and calibration."""
        return self._call(self._stub.DescribeCollection, pb.DescribeCollectionRequest(collection_id=collection_id))

    def list_collections(self, max_results: int = 0, next_token: str = "", *, timeout_s: float | None = None
                         ) -> pb.ListCollectionsResponse:
        """One page of collections (max_results 0: the server's default) and the token of the next one."""
        return self._call(self._stub.ListCollections,
                          pb.ListCollectionsRequest(max_results=max_results, next_token=next_token), timeout_s)

    def set_calibration(self, collection_id: str, calibration) -> pb.CollectionDescription:
        """Makes a calibration measured on labelled faces (a `cluster.index.calibration.Calibration`, e.g. from
        jobs/calibrate.py) the collection's; returns the collection then."""
        return self._call(self._stub.SetCalibration, pb.SetCalibrationRequest(
            collection_id=collection_id, impostor_pairs=calibration.n_pairs,
            impostor_tail=np.asarray(calibration.tail, np.float32).tolist(),
            impostor_quantiles=np.asarray(calibration.quantiles, np.float32).tolist())).collection

    def build_index(self, collection_id: str, *, timeout_s: float | None = None) -> pb.CollectionDescription:
        """Trains IVF-PQ now and waits until it is live; returns the collection then.

        Training takes minutes for millions of faces: give a `timeout_s` long enough for it.
        """
        return self._call(self._stub.BuildIndex, pb.BuildIndexRequest(collection_id=collection_id),
                          timeout_s).collection

    # ---- faces -------------------------------------------------------------

    def add(self, collection_id: str, face_ids: Sequence[str], xb: np.ndarray, *,
            external_image_ids: Sequence[str] | None = None, metadata: Sequence[Mapping[str, str]] | None = None,
            skip_existing: bool = False) -> pb.AddEmbeddingsResponse:
        """Enrolls (n, d) embeddings under the given ids; as packed arrays (`AddEmbeddingsRequest.packed`) unless
        faces carry external image ids or metadata."""
        if external_image_ids is None and metadata is None:
            return self._call(self._stub.AddEmbeddings, pb.AddEmbeddingsRequest(
                collection_id=collection_id, packed=convert.packed_faces(face_ids, xb), skip_existing=skip_existing))
        faces = [convert.new_face(face_id, x, external_image_id=external_image_ids[i] if external_image_ids else "",
                                  metadata=metadata[i] if metadata else None)
                 for i, (face_id, x) in enumerate(zip(face_ids, xb))]
        return self.add_faces(collection_id, faces, skip_existing=skip_existing)

    def add_faces(self, collection_id: str, faces: Sequence[pb.NewFace], *, skip_existing: bool = False
                  ) -> pb.AddEmbeddingsResponse:
        """Enrolls NewFace messages (see `convert.new_face`), all or none; with skip_existing, ids already
        enrolled are skipped and listed instead of failing the call, which makes a retried call idempotent."""
        return self._call(self._stub.AddEmbeddings, pb.AddEmbeddingsRequest(
            collection_id=collection_id, faces=faces, skip_existing=skip_existing))

    def search(self, collection_id: str, xq: np.ndarray, k: int, *, purpose: str, case_id: str, nprobe: int = 0,
               min_similarity: float | None = None, target_recall: float = 0.0, ids_only: bool = False
               ) -> tuple[np.ndarray, list[list[str]]]:
        """Returns D (nq, k) similarities (-inf where fewer) and the face ids, like a faiss index.

        `purpose` (why) and `case_id` (for which case) are required by the server and audited. Fails with
        UNAVAILABLE while a partition is down: (D, ids) could not say which faces are missing, so partial
        results are only to be had from `search_raw(..., allow_partial=True)`. `target_recall`: recall@10 to
        reach (0: the collection's). `ids_only`: the server answers packed arrays, no face records (the same
        D and ids here, for less work on both sides).
        """
        response = self.search_raw(collection_id, xq, k, nprobe=nprobe, min_similarity=min_similarity,
                                   purpose=purpose, case_id=case_id, target_recall=target_recall, ids_only=ids_only)
        D = np.full((len(xq), k), -np.inf, dtype=np.float32)
        ids = []
        if ids_only:
            for q, (face_ids, similarities, _) in enumerate(convert.unpack(response.packed)):
                D[q, :len(face_ids)] = similarities
                ids.append(face_ids)
            return D, ids
        for q, result in enumerate(response.results):
            D[q, :len(result.candidates)] = [c.similarity for c in result.candidates]
            ids.append([c.face.face_id for c in result.candidates])
        return D, ids

    def search_raw(self, collection_id: str, xq: np.ndarray, k: int, *, purpose: str, case_id: str,
                   nprobe: int = 0, min_similarity: float | None = None, target_fpir: float = 0.0,
                   allow_partial: bool = False, target_recall: float = 0.0,
                   ids_only: bool = False) -> pb.SearchByEmbeddingResponse:
        """The full response, with face records and false-match estimates: candidates for human review (with
        `ids_only`, `response.packed` instead: ids, similarities and gallery false-match probabilities as arrays;
        see `convert.unpack`).

        `target_fpir` (instead of `min_similarity`): the server derives the threshold from the collection's
        calibration and current size, and returns it in `response.threshold_used`.

        With `allow_partial`, a search while partitions are down answers from the others, with
        `response.partial` set and `response.missing_partitions` naming them, instead of failing UNAVAILABLE.
        """
        queries = [convert.embedding(x) for x in np.atleast_2d(xq)]
        request = pb.SearchByEmbeddingRequest(collection_id=collection_id, queries=queries, k=k, nprobe=nprobe,
                                              purpose=purpose, case_id=case_id, allow_partial=allow_partial,
                                              target_fpir=target_fpir, target_recall=target_recall,
                                              ids_only=ids_only)
        if min_similarity is not None:
            request.min_similarity = min_similarity
        return self._call(self._stub.SearchByEmbedding, request)

    def list_faces(self, collection_id: str, max_results: int = 0, next_token: str = "", *,
                   include_embeddings: bool = False) -> pb.ListFacesResponse:
        """A page of a collection's faces (records, details, image URIs) and the next page's token ("" at the end)."""
        return self._call(self._stub.ListFaces, pb.ListFacesRequest(
            collection_id=collection_id, max_results=max_results, next_token=next_token,
            include_embeddings=include_embeddings))

    def delete_faces(self, collection_id: str, face_ids: Sequence[str]) -> pb.DeleteFacesResponse:
        """Deletes faces by id; the response lists those deleted and those unknown."""
        return self._call(self._stub.DeleteFaces, pb.DeleteFacesRequest(collection_id=collection_id,
                                                                       face_ids=list(face_ids)))
