"""A partition's face records, packed into a few numpy arrays instead of one Python object per face.

At ten million faces, a `FaceRecord` per face and a dict from face id to slot cost
about 550 bytes a face in Python objects, more than the PQ code and the id the
index itself keeps (benchmarks/README.md, `scale.py`). Here a face costs its
encoded record (a 16-byte header, its id and whatever metadata it has) in one
growing byte buffer, where its slot points (12 bytes), and 16 bytes in a sorted
hash index from id to slot: about 50 bytes for a face enrolled with a short id.

The id index is a sorted array of 64-bit id hashes beside their slots, searched
with `np.searchsorted`, with a small dict of recent additions that is merged into
it in bulk (as an LSM tree's memtable is). Different ids may share a hash: every
hit is confirmed against the id stored in its slot, so a collision costs a
comparison, never a wrong answer. Deleted faces leave their bytes in the buffer
until they are half of it; then the alive records are packed into a new buffer
(and the id index drops its deleted entries), so a partition that churns holds
at most twice its alive records' bytes, each byte moved a bounded number of times.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa

from cluster.storage.records import FaceRecord

_HEADER = struct.Struct("<IIII")  # lengths of face_id, external_image_id, image_uri, detail; then metadata
_PAIR = struct.Struct("<II")
_MERGE_AT = 65_536  # recent additions kept in a dict before they are merged into the sorted arrays
_PACK_FROM = 1 << 20  # deleted records' bytes below which the buffer is never repacked
# `face_ids` reads this many ids or fewer one by one: gathering them with numpy and Arrow has a fixed cost of
# about 40 ids read one by one, four times the cost of a batch-1 search's ten (benchmarks/README.md).
_FEW_IDS = 32
# Python's own string hash: fast, and never stored, so its per-process seed does no harm. Tests replace
# it with one that collides.
_id_hash = hash


def encode(record: FaceRecord) -> bytes:
    """A record's bytes: the header, the four fields, then the metadata as (key length, value length, key, value)."""
    texts = [record.face_id.encode(), record.external_image_id.encode(), record.image_uri.encode()]
    parts = [_HEADER.pack(len(texts[0]), len(texts[1]), len(texts[2]), len(record.detail)), *texts, record.detail]
    for key, value in record.metadata.items():
        k, v = key.encode(), value.encode()
        parts += [_PAIR.pack(len(k), len(v)), k, v]
    return b"".join(parts)


def decode(data: bytes | memoryview) -> FaceRecord:
    lengths = _HEADER.unpack_from(data)
    fields, at = [], _HEADER.size
    for n in lengths:
        fields.append(bytes(data[at:at + n]))
        at += n
    metadata = {}
    while at < len(data):
        nk, nv = _PAIR.unpack_from(data, at)
        at += _PAIR.size
        metadata[bytes(data[at:at + nk]).decode()] = bytes(data[at + nk:at + nk + nv]).decode()
        at += nk + nv
    return FaceRecord(fields[0].decode(), fields[1].decode(), fields[2].decode(), metadata, fields[3])


class FaceTable:
    """Records by slot, and the slot of each alive face id. Not thread-safe: `ShardIndex` locks around it.

    Example:
        >>> table = FaceTable()
        >>> table.put([FaceRecord("a", metadata={"person_id": "7"})], np.array([3]))
        >>> table.slot_of("a"), table.record(3).metadata, table.record(0)
        (3, {'person_id': '7'}, None)
    """

    def __init__(self):
        self._bytes = np.empty(0, dtype=np.uint8)
        self._used = 0  # bytes of self._bytes in use
        self._dead = 0  # bytes of self._bytes[:self._used] that deleted faces left
        self._start = np.empty(0, dtype=np.int64)  # by slot: where its record begins
        self._length = np.zeros(0, dtype=np.uint32)  # by slot: its record's length; 0: an empty slot
        self._hashes = np.empty(0, dtype=np.int64)  # sorted
        self._slots = np.empty(0, dtype=np.int64)  # the slot of each hash; -1 once deleted
        self._recent: dict[str, int] = {}
        self.size = 0  # faces alive

    def put(self, records: list[FaceRecord], slots: np.ndarray) -> None:
        """Stores records at empty slots; their ids must not be alive here."""
        encoded = [encode(r) for r in records]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        end = int(slots.max()) + 1 if len(slots) else 0
        if end > self._start.size:
            grown = max(end, int(self._start.size * 1.5), 1024)
            self._start = resized(self._start, grown)
            self._length = resized(self._length, grown)
        need = self._used + int(lengths.sum())
        if need > self._bytes.size:
            self._bytes = resized(self._bytes, max(need, int(self._bytes.size * 1.5), 1 << 16))
        self._bytes[self._used:need] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._start[slots] = self._used + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self._length[slots] = lengths
        self._used = need
        for record, slot in zip(records, slots.tolist()):
            self._recent[record.face_id] = slot
        self.size += len(records)
        if len(self._recent) >= _MERGE_AT:
            self._merge()

    def _merge(self) -> None:
        keep = self._slots >= 0
        recent = np.fromiter(map(_id_hash, self._recent), np.int64, len(self._recent))
        hashes = np.concatenate([self._hashes[keep], recent])
        slots = np.concatenate([self._slots[keep], np.fromiter(self._recent.values(), np.int64, len(self._recent))])
        order = np.argsort(hashes, kind="stable")
        self._hashes, self._slots = hashes[order], slots[order]
        self._recent = {}

    def _find(self, face_id: str) -> int:
        """The index into the sorted arrays of an alive face_id, or -1."""
        h = _id_hash(face_id)
        at = int(np.searchsorted(self._hashes, h))
        while at < self._hashes.size and self._hashes[at] == h:
            slot = int(self._slots[at])
            if slot >= 0 and self.face_id(slot) == face_id:
                return at
            at += 1
        return -1

    def slot_of(self, face_id: str) -> int | None:
        """The slot of an alive face id, or None."""
        slot = self._recent.get(face_id)
        if slot is not None:
            return slot
        at = self._find(face_id)
        return None if at < 0 else int(self._slots[at])

    def remove(self, face_id: str) -> int | None:
        """Empties the slot of an alive face id and returns it (None when the id is not alive here)."""
        slot = self._recent.pop(face_id, None)
        if slot is None:
            at = self._find(face_id)
            if at < 0:
                return None
            slot, self._slots[at] = int(self._slots[at]), -1
        self._dead += int(self._length[slot])
        self._length[slot] = 0
        self.size -= 1
        if self._dead >= max(_PACK_FROM, self._used // 2):
            self._pack()
        return slot

    def _pack(self) -> None:
        """Moves the alive records into a buffer of their own size, in slot order, and drops the id index's
        deleted entries."""
        alive = np.flatnonzero(self._length)
        lengths = self._length[alive].astype(np.int64)
        starts = np.zeros(alive.size, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        used = int(lengths.sum())
        packed = np.empty(max(used, 1 << 16), dtype=np.uint8)
        packed[:used] = self._bytes[np.repeat(self._start[alive] - starts, lengths) + np.arange(used)]
        self._bytes, self._used, self._dead = packed, used, 0
        self._start[alive] = starts
        keep = self._slots >= 0
        self._hashes, self._slots = self._hashes[keep], self._slots[keep]

    def face_id(self, slot: int) -> str | None:
        """The id at a slot, None when it is empty: read from the header without decoding the record."""
        if slot >= self._length.size or not self._length[slot]:
            return None
        start = int(self._start[slot])
        n = int(self._bytes[start:start + 4].view(np.uint32)[0])
        return self._bytes[start + _HEADER.size:start + _HEADER.size + n].tobytes().decode()

    def face_ids(self, slots: np.ndarray) -> list[str | None]:
        """The ids at many slots (None where empty), gathered from the buffer with numpy as `columns` gathers
        them: a lean search's answer, where `face_id` per slot cost a shard at 250k faces as much time as its
        search (a third of its time at batch 256, in a py-spy profile)."""
        slots = np.asarray(slots, dtype=np.int64).ravel()
        if slots.size <= _FEW_IDS:
            return [self.face_id(slot) if slot >= 0 else None for slot in slots.tolist()]
        alive = (slots >= 0) & (slots < self._length.size)
        alive[alive] = self._length[slots[alive]] > 0
        start = self._start[slots[alive]]
        lengths = self._bytes[start[:, None] + np.arange(4)].view("<u4")[:, 0].astype(np.int64)
        ids = _gathered(self._bytes, start + _HEADER.size, lengths, pa.string()).to_pylist()
        if len(ids) == slots.size:  # every slot alive
            return ids
        out: list[str | None] = [None] * slots.size
        for row, face_id in zip(np.flatnonzero(alive).tolist(), ids):
            out[row] = face_id
        return out

    def record(self, slot: int) -> FaceRecord | None:
        if slot >= self._length.size or not self._length[slot]:
            return None
        start = int(self._start[slot])
        return decode(memoryview(self._bytes[start:start + int(self._length[slot])]))

    def columns(self, slots: np.ndarray) -> dict[str, pa.Array]:
        """The records at alive slots as the Arrow columns of a segment or snapshot (`records.rows_table`), gathered
        from the byte buffer with numpy: no Python object per face, but for the faces that carry metadata.
        A compaction at millions of faces spent most of its time decoding records one by one before."""
        start = self._start[slots]
        end = start + self._length[slots]
        header = self._bytes[start[:, None] + np.arange(_HEADER.size)].view("<u4").astype(np.int64)
        at, out = start + _HEADER.size, {}
        for i, (name, kind) in enumerate([("face_id", pa.string()), ("external_image_id", pa.string()),
                                          ("image_uri", pa.string()), ("detail", pa.binary())]):
            out[name] = _gathered(self._bytes, at, header[:, i], kind)
            at = at + header[:, i]
        with_metadata = np.flatnonzero(at < end)  # metadata pairs follow the four fields
        items = [[] for _ in range(len(slots))]
        for row in with_metadata.tolist():
            items[row] = list(self.record(int(slots[row])).metadata.items())
        out["metadata"] = pa.array(items, pa.map_(pa.string(), pa.string()))
        return out

    def memory_bytes(self) -> int:
        return self._used + 12 * self._start.size + 16 * self._hashes.size + 120 * len(self._recent)


def _gathered(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, kind: pa.DataType) -> pa.Array:
    """A string or binary Arrow array of the byte ranges [starts, starts + lengths) of `buffer`."""
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    where = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    large = pa.large_string() if kind == pa.string() else pa.large_binary()  # 64-bit offsets: any size
    array = pa.Array.from_buffers(large, lengths.size, [None, pa.py_buffer(offsets), pa.py_buffer(buffer[where])])
    return array.cast(kind)


def resized(array: np.ndarray, size: int) -> np.ndarray:
    """A copy of `array` grown to `size` entries, zeros after the old ones."""
    out = np.zeros(size, dtype=array.dtype)
    out[:array.size] = array
    return out
