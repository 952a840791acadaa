"""Reading enrolled faces back: by id, page by page, and the memory a collection holds."""

from __future__ import annotations

import base64

from cluster.errors import InvalidArgument
from cluster.gateway.collections import CollectionState, ids_by_worker
from cluster.gateway.writes import MAX_IDS_PER_CALL
from cluster.shards.backend import ShardBackend
from cluster.storage.records import FaceRecord


class Reads:
    """Faces of collections as the shard workers hold them."""

    def __init__(self, shards: ShardBackend):
        self.shards = shards

    def get_faces(self, state: CollectionState, face_ids: list[str], *, include_embeddings: bool = False
                  ) -> tuple[list[FaceRecord], list[str]]:
        """Returns (faces found in request order, unknown ids)."""
        if not 1 <= len(face_ids) <= MAX_IDS_PER_CALL:
            raise InvalidArgument(f"face_ids: {len(face_ids)} given, 1 to {MAX_IDS_PER_CALL} per request")
        m = state.manifest
        grouped = ids_by_worker(list(dict.fromkeys(face_ids)), m.num_partitions, self.shards.num_workers)
        found = {r.face_id: r for records in self.shards.call(
            "get_faces", [(w, (m.collection_id, ids, include_embeddings)) for w, ids in grouped.items()])
            for r in records}
        return [found[f] for f in dict.fromkeys(face_ids) if f in found], [f for f in face_ids if f not in found]

    def list_faces(self, state: CollectionState, max_results: int = 1000, next_token: str = "", *,
                   include_embeddings: bool = False) -> tuple[list[FaceRecord], str]:
        """A page of faces in (partition, slot) order and the token of the next page ("" at the end)."""
        if not 0 <= max_results <= MAX_IDS_PER_CALL:
            raise InvalidArgument(f"max_results must be in [0, {MAX_IDS_PER_CALL}], got {max_results}")
        limit = max_results or 1000
        partition, start = _decode_token(next_token) if next_token else (0, 0)
        m = state.manifest
        faces: list[FaceRecord] = []
        while partition < m.num_partitions and len(faces) < limit:
            page, start = self.shards.call("scan", [(partition % self.shards.num_workers, (
                m.collection_id, partition, start, limit - len(faces), include_embeddings))])[0]
            faces.extend(page)
            if start < 0:
                partition, start = partition + 1, 0
        return faces, _encode_token(partition, start) if partition < m.num_partitions else ""

    def memory_bytes(self, state: CollectionState) -> int:
        return sum(self.shards.call_all("memory_bytes", state.manifest.collection_id))


def _encode_token(partition: int, start: int) -> str:
    return base64.urlsafe_b64encode(f"{partition}:{start}".encode()).decode()


def _decode_token(token: str) -> tuple[int, int]:
    try:
        partition, start = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        return int(partition), int(start)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"next_token {token!r} is not a token this server issued") from e
