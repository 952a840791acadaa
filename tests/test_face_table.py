"""The packed stores of a partition: records and their id index (FaceTable), vectors memory-mapped from
local disk (SlotVectors), and snapshots streamed in row groups, at sizes where each of them matters."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.index import face_table
from cluster.index.face_table import _FEW_IDS, FaceTable
from cluster.index.shard_index import ShardIndex
from cluster.index.slot_vectors import SlotVectors
from cluster.index.synthetic import clustered_embeddings, noisy_probes
from cluster.index.training import load_index, train_ivfpq
from cluster.storage.object_store import ObjectStore
from cluster.storage.records import FaceBatch, FaceRecord, batch_table, read_batches, rows_table, write_tables

ids = st.text(alphabet="abcdé/_-.0123456789", min_size=1, max_size=12)
records = st.builds(FaceRecord, ids, st.text(max_size=5), st.text(max_size=5),
                    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3), st.binary(max_size=6))


@pytest.fixture(params=["python", "colliding"])
def id_hash(request, monkeypatch):
    """Python's hash, or one under which most ids collide (every hit must then be checked against its id)."""
    monkeypatch.setattr(face_table, "_MERGE_AT", 3)  # merge often, so that lookups go through the sorted arrays
    monkeypatch.setattr(face_table, "_PACK_FROM", 0)  # and repack the buffer whenever half of it is deleted
    if request.param == "colliding":
        monkeypatch.setattr(face_table, "_id_hash", lambda face_id: len(face_id) % 3)


# id_hash only patches module constants, the same for every example
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.booleans(), records), max_size=40))
def test_face_table_answers_as_a_dict_of_alive_records_does(id_hash, steps):
    table, model, slot_of, next_slot = FaceTable(), {}, {}, 0
    for add, record in steps:
        if add and record.face_id not in slot_of:
            table.put([record], np.array([next_slot]))
            model[next_slot], slot_of[record.face_id] = record, next_slot
            next_slot += 1
        elif not add:
            expected = slot_of.pop(record.face_id, None)
            assert table.remove(record.face_id) == expected
            model.pop(expected, None)
    assert table.size == len(model)
    for slot in range(next_slot + 1):
        assert table.record(slot) == model.get(slot)
        assert table.face_id(slot) == (model[slot].face_id if slot in model else None)
    slots = np.array([*range(next_slot + 1), 10**7, 0, -1])  # in any order, with repeats, past either end
    expected = [model[s].face_id if s in model else None for s in slots.tolist()]
    assert table.face_ids(slots) == expected
    copies = 1 + _FEW_IDS // slots.size  # past the few read one by one: gathered at once, the same ids
    assert table.face_ids(np.tile(slots, copies)) == expected * copies
    assert table.face_ids(np.array([], dtype=np.int64)) == []
    for record in [r for _, r in steps]:
        assert table.slot_of(record.face_id) == slot_of.get(record.face_id)


def test_face_table_keeps_a_face_in_tens_of_bytes_where_python_objects_took_hundreds():
    table = FaceTable()
    n = 200_000
    table.put([FaceRecord(f"face-{i:08d}") for i in range(n)], np.arange(n))
    assert table.slot_of("face-00123456") == 123456 and table.slot_of("face-x") is None
    assert table.memory_bytes() / n < 100  # 30 bytes of record, 12 of slot, 16 of id index, and growth room


def test_deleted_records_give_their_bytes_back():
    table = FaceTable()
    n = 200_000
    table.put([FaceRecord(f"face-{i:08d}", metadata={"person": str(i)}) for i in range(n)], np.arange(n))
    full = table.memory_bytes()
    for i in range(0, n, 4):  # three faces in four leave
        for j in (i, i + 1, i + 2):
            assert table.remove(f"face-{j:08d}") == j
    assert table.size == n // 4
    # slots keep 12 bytes each (the partition reuses them); records and the id index shrink to the alive quarter
    assert table.memory_bytes() < 12 * n + (full - 12 * n) * 0.6
    assert table.record(7) == FaceRecord("face-00000007", metadata={"person": "7"}) and table.record(6) is None
    assert table.slot_of("face-00199999") == 199_999 and table.slot_of("face-00199998") is None
    table.put([FaceRecord("face-00000006", image_uri="s3://b/6.jpg")], np.array([6]))
    assert table.record(6) == FaceRecord("face-00000006", image_uri="s3://b/6.jpg")
    assert table.slot_of("face-00000006") == 6


def test_mapped_vectors_live_in_an_unlinked_file_and_survive_growth(tmp_path):
    vectors = SlotVectors(8, str(tmp_path))
    vectors.grow(10)
    vectors.array[:10] = np.arange(80, dtype=np.float16).reshape(10, 8)
    before = vectors.array
    vectors.grow(5000)
    assert vectors.mapped and vectors.capacity >= 5000
    np.testing.assert_array_equal(vectors.array[:10], np.arange(80, dtype=np.float16).reshape(10, 8))
    np.testing.assert_array_equal(before, vectors.array[:before.shape[0]])  # an old view stays valid
    assert os.listdir(tmp_path) == []  # nothing left behind by a crash


def test_a_partition_with_mapped_vectors_searches_exactly_as_one_in_memory(tmp_path):
    d = 32
    xb = clustered_embeddings(6000, d, seed=3)
    xq, _ = noisy_probes(xb, 40)
    trained = load_index(train_ivfpq(xb, 32, 8))
    results = []
    for vectors_dir in (None, str(tmp_path)):
        shard = ShardIndex(d, 0, 1, vectors_dir=vectors_dir)
        for start in range(0, len(xb), 1000):
            shard.add(FaceBatch([FaceRecord(f"f{i}") for i in range(start, start + 1000)],
                                xb[start:start + 1000].astype(np.float16)))
        shard.delete([f"f{i}" for i in range(0, 6000, 7)])
        exact = shard.search(xq, 10)
        shard.build(1, trained)
        shard.activate(1)
        Iq = np.tile(np.arange(32), (len(xq), 1))
        approximate = shard.search(xq, 10, version=1, Iq=Iq, Dq=np.zeros_like(Iq, dtype=np.float32), rerank_k=50)
        results.append((exact, approximate, shard.memory_bytes()))
    for (D_memory, I_memory), (D_mapped, I_mapped) in zip(results[0][:2], results[1][:2]):
        np.testing.assert_array_equal(I_memory, I_mapped)
        np.testing.assert_array_equal(D_memory, D_mapped)
    assert not np.isin(np.arange(0, 6000, 7), results[0][1][1]).any()  # deleted faces stay deleted
    assert results[0][2] - results[1][2] == (6000 - 858) * d * 2  # mapped vectors are not in memory


def test_snapshots_stream_through_row_groups_and_restore_every_field(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    shard = ShardIndex(16, 1, 2)
    xb = clustered_embeddings(2500, 16, seed=4).astype(np.float16)
    shard.add(FaceBatch([FaceRecord(f"f{i}", "img", "s3://b/k", {"person_id": str(i % 9)}, b"\x01\x02")
                         for i in range(2500)], xb))
    shard.delete(["f3", "f2499"])
    path = str(tmp_path / "snapshot.parquet")
    write_tables(path, shard.snapshot(rows=1000), 16)
    store.put_file("snapshots/p1.parquet", path)
    with store.open_input("snapshots/p1.parquet") as f:
        batches = list(read_batches(f, 16, rows=700))
    assert pq.ParquetFile(path).num_row_groups == 3  # written 1000 faces at a time
    assert [len(b) for b in batches] == [700, 700, 700, 398]  # and read 700 at a time
    restored = ShardIndex(16, 1, 2)
    for batch in batches:
        restored.add(batch, index=False)
    restored.rebuild_exact()
    assert restored.size == 2498 and restored.contains(["f3", "f4", "f2499"]) == ["f4"]
    assert restored.get(["f10"])[0] == FaceRecord("f10", "img", "s3://b/k", {"person_id": "1"}, b"\x01\x02")
    np.testing.assert_array_equal(restored.vectors(), shard.vectors())
    np.testing.assert_array_equal(restored.search(xb[:5].astype(np.float32), 3)[1],
                                  shard.search(xb[:5].astype(np.float32), 3)[1])


@given(stored=st.lists(records, min_size=1, max_size=30, unique_by=lambda r: r.face_id), data=st.data())
@settings(max_examples=60, deadline=None)
def test_columns_gathered_from_the_buffer_are_the_records_rows(stored, data):
    """A snapshot's rows come from the packed buffer without decoding each record: the same rows as from
    the records themselves, metadata, empty fields and non-ASCII text included."""
    table = FaceTable()
    slots = np.array(data.draw(st.permutations(range(2 * len(stored))))[:len(stored)], dtype=np.int64)
    table.put(stored, slots)
    asked = np.array(data.draw(st.lists(st.sampled_from(slots.tolist()), max_size=20)), dtype=np.int64)
    by_slot = dict(zip(slots.tolist(), stored))
    vectors = np.zeros((asked.size, 4), np.float16)
    expected = FaceBatch([by_slot[s] for s in asked.tolist()], vectors, asked)
    assert rows_table(asked, table.columns(asked), vectors).equals(batch_table(expected))
