"""Reading enrolled faces back: by id, page by page, and the memory a collection holds."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct

from cluster.api.limits import DEFAULT_FACES_PER_PAGE, MAX_IDS_PER_CALL
from cluster.errors import InvalidArgument, ResourceExhausted
from cluster.gateway.collections import CollectionState, ids_by_worker
from cluster.shards.backend import ShardBackend
from cluster.storage.manifest import CollectionManifest
from cluster.storage.records import FaceRecord

# A ListFaces page token: version, the collection's creation time (a collection deleted and created again under
# the same id is another collection), partition and slot, then an HMAC-SHA256 tag over them and the collection id.
_TOKEN_VERSION = 1
_TOKEN_FIELDS = struct.Struct("<BdII")
_TAG_BYTES = 16  # 128 bits of the tag: forging one takes 2^128 tries


class Reads:
    """Faces of collections as the shard workers hold them.

    Args:
        shards: the shard workers.
        token_key: the secret that authenticates ListFaces page tokens; a fresh random one by default, so a
            token is good until its collection is deleted or this gateway restarts.
    """

    def __init__(self, shards: ShardBackend, *, token_key: bytes | None = None):
        self.shards = shards
        self._token_key = token_key or secrets.token_bytes(32)

    def get_faces(self, state: CollectionState, face_ids: list[str], *, include_embeddings: bool = False
                  ) -> tuple[list[FaceRecord], list[str]]:
        """Returns (faces found in request order, unknown ids)."""
        if not 1 <= len(face_ids) <= MAX_IDS_PER_CALL:
            raise (ResourceExhausted if face_ids else InvalidArgument)(
                f"face_ids: {len(face_ids)} given, 1 to {MAX_IDS_PER_CALL} per request")
        m = state.manifest
        grouped = ids_by_worker(list(dict.fromkeys(face_ids)), m.num_partitions, self.shards.num_workers)
        found = {r.face_id: r for records in self.shards.call(
            "get_faces", [(w, (m.collection_id, ids, include_embeddings)) for w, ids in grouped.items()])
            for r in records}
        return [found[f] for f in dict.fromkeys(face_ids) if f in found], [f for f in face_ids if f not in found]

    def list_faces(self, state: CollectionState, max_results: int = DEFAULT_FACES_PER_PAGE, next_token: str = "", *,
                   include_embeddings: bool = False) -> tuple[list[FaceRecord], str]:
        """A page of faces in (partition, slot) order and the token of the next page ("" at the end)."""
        if not 0 <= max_results <= MAX_IDS_PER_CALL:
            raise InvalidArgument(f"max_results must be in [0, {MAX_IDS_PER_CALL}], got {max_results}")
        limit = max_results or DEFAULT_FACES_PER_PAGE
        m = state.manifest
        partition, start = self._decode_token(m, next_token) if next_token else (0, 0)
        faces: list[FaceRecord] = []
        while partition < m.num_partitions and len(faces) < limit:
            page, start = self.shards.call("scan", [(partition % self.shards.num_workers, (
                m.collection_id, partition, start, limit - len(faces), include_embeddings))])[0]
            faces.extend(page)
            if start < 0:
                partition, start = partition + 1, 0
        return faces, self._encode_token(m, partition, start) if partition < m.num_partitions else ""

    def memory_bytes(self, state: CollectionState) -> int:
        return sum(self.shards.call_all("memory_bytes", state.manifest.collection_id))

    def _tag(self, collection_id: str, fields: bytes) -> bytes:
        return hmac.new(self._token_key, collection_id.encode() + b"\0" + fields, hashlib.sha256).digest()[:_TAG_BYTES]

    def _encode_token(self, m: CollectionManifest, partition: int, start: int) -> str:
        fields = _TOKEN_FIELDS.pack(_TOKEN_VERSION, m.created_at, partition, start)
        return base64.urlsafe_b64encode(fields + self._tag(m.collection_id, fields)).decode()

    def _decode_token(self, m: CollectionManifest, token: str) -> tuple[int, int]:
        """(partition, slot) of a token this gateway issued for this collection.

        Raises:
            InvalidArgument: a token that does not decode, was not issued by this gateway for this collection
                (forged, edited, truncated, another collection's, or issued before a restart), or is stale
                (the collection was deleted and created again since).
        """
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
        except (UnicodeEncodeError, binascii.Error, ValueError):
            raw = b""
        fields, tag = raw[:_TOKEN_FIELDS.size], raw[_TOKEN_FIELDS.size:]
        if len(raw) != _TOKEN_FIELDS.size + _TAG_BYTES or not hmac.compare_digest(
                tag, self._tag(m.collection_id, fields)):
            raise InvalidArgument(f"next_token {token[:100]!r} is not a page token this server issued for "
                                  f"collection {m.collection_id!r} (tokens end when the server restarts): "
                                  "list again from the start with an empty next_token")
        version, created_at, partition, start = _TOKEN_FIELDS.unpack(fields)
        if version != _TOKEN_VERSION or created_at != m.created_at:
            raise InvalidArgument(f"next_token is stale: collection {m.collection_id!r} was deleted and created "
                                  "again since it was issued; list again from the start with an empty next_token")
        if partition >= m.num_partitions or start >= 2**31:
            raise InvalidArgument(f"next_token names partition {partition}, slot {start}: out of range for "
                                  f"collection {m.collection_id!r} ({m.num_partitions} partitions)")
        return partition, start
