"""The object store: a local folder, and a real S3 server on 127.0.0.1 through pyarrow's S3 filesystem; S3 images."""

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import S3_CREDENTIALS, wait_until

from cluster.errors import InvalidArgument, Unavailable
from cluster.index.synthetic import clustered_embeddings
from cluster.serve import audit as audit_log
from cluster.serve.audit import AuditLog
from cluster.storage.lease import LEASE_KEY, StoreInUse, WriterLease
from cluster.storage.object_store import ObjectStore, PreconditionFailed
from cluster.storage.records import FaceBatch, FaceRecord, batch_table, read_batches, write_tables
from cluster.storage.s3_images import ImageNotFound, ImageTooLarge, S3ImageReader, S3Object


def test_object_store_on_s3(s3_server, s3_bucket):
    store = ObjectStore(f"s3://{s3_bucket}/root", s3_endpoint=s3_server)
    store.put("a/b.bin", b"\x00\x01")
    store.put("a/c.bin", b"x" * 1_000_000)
    assert store.get("a/b.bin") == b"\x00\x01" and len(store.get("a/c.bin")) == 1_000_000
    assert store.list("a/") == ["a/b.bin", "a/c.bin"] and store.exists("a/b.bin")
    store.delete_prefix("a/")
    assert store.list("") == [] and not store.exists("a/b.bin")
    with pytest.raises(NotImplementedError):  # S3 objects cannot grow
        store.append("a/log", b"record\n")


def test_the_audit_log_on_s3_writes_an_object_a_write(s3_server, s3_bucket):
    store = ObjectStore(f"s3://{s3_bucket}/audited", s3_endpoint=s3_server)
    log = AuditLog(store)
    for n in range(3):
        log.record({"method": "ListCollections", "identity": f"call {n}"})
    log.close()
    result = audit_log.verify(store)
    assert result.intact and result.objects == 3 and result.records == 3
    assert [r["identity"] for r in audit_log.read_audit(store)] == ["call 0", "call 1", "call 2"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_put_if_writes_only_over_the_object_as_read(where, tmp_path, request):
    if where == "s3":
        s3_server, s3_bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        store = ObjectStore(f"s3://{s3_bucket}/cas", s3_endpoint=s3_server)
    else:
        store = ObjectStore(str(tmp_path))
    first = store.put_if("a/lease", b"one", tag=None)  # only if absent
    with pytest.raises(PreconditionFailed):
        store.put_if("a/lease", b"two", tag=None)
    assert store.get_tagged("a/lease") == (b"one", first)
    second = store.put_if("a/lease", b"two", tag=first)
    with pytest.raises(PreconditionFailed):
        store.put_if("a/lease", b"three", tag=first)  # stale: another writer replaced it since
    assert store.get_tagged("a/lease") == (b"two", second) and second != first
    store.put("a/lease", b"four")  # an unconditional write changes the tag too
    with pytest.raises(PreconditionFailed):
        store.put_if("a/lease", b"five", tag=second)
    assert store.get("a/lease") == b"four" and store.list("a/") == ["a/lease"]
    with pytest.raises(FileNotFoundError):
        store.get_tagged("a/none")


def test_a_snapshot_streams_to_s3_and_back_in_row_groups(s3_server, s3_bucket, tmp_path):
    store = ObjectStore(f"s3://{s3_bucket}/streamed", s3_endpoint=s3_server)
    xb = clustered_embeddings(3000, 16, seed=9).astype(np.float16)
    batches = [FaceBatch([FaceRecord(f"f{i}", metadata={"n": str(i)}) for i in range(s, s + 1000)], xb[s:s + 1000],
                         np.arange(s, s + 1000)) for s in range(0, 3000, 1000)]
    write_tables(str(tmp_path / "snapshot.parquet"), map(batch_table, batches), 16)
    store.put_file("p0/snapshot.parquet", str(tmp_path / "snapshot.parquet"))  # streamed from the file
    with store.open_input("p0/snapshot.parquet") as f:  # ranged reads, a row group at a time
        back = list(read_batches(f, 16, rows=1000))
    assert [len(b) for b in back] == [1000, 1000, 1000]
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in back]), xb)
    assert back[2].records[999] == FaceRecord("f2999", metadata={"n": "2999"})
    np.testing.assert_array_equal(back[1].positions, np.arange(1000, 2000))


def test_s3_images_are_refused_by_size_and_named_when_missing(s3_server, s3_bucket):
    client = boto3.client("s3", endpoint_url=s3_server)  # credentials: the environment the s3_bucket fixture sets
    client.put_object(Bucket=s3_bucket, Key="faces/ok.jpg", Body=b"x" * 1000)
    client.put_object(Bucket=s3_bucket, Key="faces/big.jpg", Body=b"x" * 1001)
    reader = S3ImageReader(s3_server, max_bytes=1000)

    assert reader.read(S3Object.from_uri(f"s3://{s3_bucket}/faces/ok.jpg")) == b"x" * 1000
    with pytest.raises(ImageTooLarge, match="is 1001 bytes, over the limit of 1000 bytes"):
        reader.read(S3Object(s3_bucket, "faces/big.jpg"))
    with pytest.raises(ImageNotFound, match="NoSuchKey"):
        reader.read(S3Object(s3_bucket, "faces/gone.jpg"))
    with pytest.raises(ImageNotFound, match="NoSuchBucket"):
        reader.read(S3Object("no-such-bucket", "a.jpg"))
    # Found by tests/test_fuzz.py: botocore's own refusal of a bucket name answered UNAVAILABLE ("retry").
    for bucket in ("a b", "é", "a/b", "x" * 300):
        with pytest.raises(InvalidArgument, match="Invalid bucket name"):
            reader.read(S3Object(bucket, "a.jpg"))
    for uri in ("s3://bucket-only", "s3:///key", "/local/path.jpg"):
        with pytest.raises(InvalidArgument, match="s3://bucket/key"):
            S3Object.from_uri(uri)
    assert S3Object.from_uri("s3://b/a?b#c.jpg") == S3Object("b", "a?b#c.jpg")  # a key is not a URL path


def test_write_killed_before_its_rename_leaves_nothing_readers_see(tmp_path):
    store = ObjectStore(str(tmp_path))
    segment = pa.table({"face_id": ["a", "b"]})
    sink = pa.BufferOutputStream()
    pq.write_table(segment, sink)
    store.put("segments/1.parquet", sink.getvalue().to_pybytes())
    # The process dies (SIGKILL, no cleanup) with the whole object written but not yet renamed into place.
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal
from cluster.storage.object_store import ObjectStore, PreconditionFailed
os.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
ObjectStore({str(tmp_path)!r}).put("segments/2.parquet", open({str(tmp_path / "segments" / "1.parquet")!r}, "rb").read())
"""])
    assert killed.returncode == -9
    assert len(list((tmp_path / "segments").iterdir())) == 2  # the orphaned temporary file

    assert pq.read_table(tmp_path / "segments").column("face_id").to_pylist() == ["a", "b"]
    (tmp_path / "segments" / f"3.parquet.tmp-{'0' * 32}").write_bytes(b"")  # as earlier versions named them
    assert store.list("") == ["segments/1.parquet"] and not store.exists("segments/2.parquet")
    store.delete_prefix("segments/")
    assert list((tmp_path / "segments").iterdir()) == []


def test_a_local_put_syncs_the_object_its_new_name_and_each_folder_made_for_it(tmp_path, monkeypatch):
    """What a power cut cannot take once put returned: the bytes (the file's sync), its name in its folder and
    the names of the folders made for it (their folders' syncs); a rename is the folder's data, not the file's."""
    store = ObjectStore(str(tmp_path / "store"))
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd))[1])
    root = str(tmp_path / "store")
    store.put("audit/2026/12/02/0001.jsonl", b"record\n")
    assert synced[0].startswith(f"{root}/audit/2026/12/02/.0001.jsonl.tmp-")  # the bytes, before the rename
    assert synced[1:] == [f"{root}/audit/2026/12/02", f"{root}/audit/2026/12", f"{root}/audit/2026",
                          f"{root}/audit", root]  # the new name, then each made folder's name, deepest first
    synced.clear()
    store.put("audit/2026/12/02/0002.jsonl", b"record\n")
    assert len(synced) == 2 and synced[1] == f"{root}/audit/2026/12/02"  # no folder made: its own name only
    assert store.get("audit/2026/12/02/0002.jsonl") == b"record\n"


def test_a_local_delete_syncs_the_folders_it_removed_names_from(tmp_path, monkeypatch):
    """A removal is the folder's data: a deleted manifest (a deleted collection) must not come back after a
    power cut."""
    store = ObjectStore(str(tmp_path / "store"))
    for key in ("collections/a/manifest.json", "collections/a/segments/1.parquet",
                "collections/a/segments/2.parquet", "collections/b/manifest.json"):
        store.put(key, b"x")
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd))[1])
    root = str(tmp_path / "store")
    store.delete("collections/a/manifest.json")
    assert synced == [f"{root}/collections/a"]
    synced.clear()
    store.delete_prefix("collections/a/")
    assert sorted(synced) == [f"{root}/collections/a/segments"]  # each folder once, however many it held
    store.delete("collections/c/manifest.json")  # absent, in a folder that is not there: nothing to sync
    assert store.list("") == ["collections/b/manifest.json"]


def test_a_local_append_syncs_its_bytes_once_and_a_new_name_and_adds_all_of_them_or_none(tmp_path, monkeypatch):
    store = ObjectStore(str(tmp_path / "store"))
    root = str(tmp_path / "store")
    synced = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real, name=name: (
            synced.append((name, os.readlink(f"/proc/self/fd/{fd}"))), real(fd))[1])
    store.append("audit/2026/12/03/0001.jsonl", b"header\nrecord 1\n")
    assert synced == [("fdatasync", f"{root}/audit/2026/12/03/0001.jsonl"),  # the bytes, then the new names
                      *(("fsync", folder) for folder in (f"{root}/audit/2026/12/03", f"{root}/audit/2026/12",
                                                         f"{root}/audit/2026", f"{root}/audit", root))]
    synced.clear()
    store.append("audit/2026/12/03/0001.jsonl", b"record 2\n")
    assert synced == [("fdatasync", f"{root}/audit/2026/12/03/0001.jsonl")]  # one sync: no name is new

    write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: write(fd, bytes(data)[:4]))  # a short write, then a full disk
    monkeypatch.setattr(os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space"):
        store.append("audit/2026/12/03/0001.jsonl", b"record 3\n")
    assert store.get("audit/2026/12/03/0001.jsonl") == b"header\nrecord 1\nrecord 2\n"  # cut back: none of it


def test_gallery_on_s3_survives_restart(galleries, s3_server, s3_bucket):
    uri = f"s3://{s3_bucket}/gallery"
    gallery = galleries.start(uri, s3_endpoint=s3_server, env_vars=S3_CREDENTIALS)
    xb = clustered_embeddings(500, 32, seed=31)
    gallery.create_collection("c", dimension=32)
    gallery.add("c", [FaceRecord(f"f{i}", metadata={"row": str(i)}) for i in range(500)], xb)
    gallery.delete_faces("c", ["f7"])
    before = gallery.search("c", xb[:20], 5)
    galleries.stop(gallery)

    again = galleries.start(uri, s3_endpoint=s3_server, env_vars=S3_CREDENTIALS)
    after = again.search("c", xb[:20], 5)
    assert [[c.record.face_id for c in q] for q in after.candidates] == \
        [[c.record.face_id for c in q] for q in before.candidates]
    assert again.describe("c")[0].face_count == 499
    faces, _ = again.get_faces("c", ["f3", "f7"])
    assert [(f.face_id, f.metadata) for f in faces] == [("f3", {"row": "3"})]
    assert np.isfinite([c.similarity for q in after.candidates for c in q]).all()


def test_one_writer_lease_per_local_store_released_however_the_holder_exits(tmp_path):
    store = ObjectStore(str(tmp_path))
    lease = WriterLease.acquire(store)
    with pytest.raises(StoreInUse, match=f'"pid": {os.getpid()}'):
        WriterLease.acquire(ObjectStore(str(tmp_path)))
    lease.release()
    WriterLease.acquire(store).release()

    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from cluster.storage.lease import WriterLease
from cluster.storage.object_store import ObjectStore, PreconditionFailed
WriterLease.acquire(ObjectStore({str(tmp_path)!r})); print("held", flush=True); time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(StoreInUse, match=f'"pid": {holder.pid}'):
        WriterLease.acquire(store)
    holder.kill()  # SIGKILL: nothing released by the holder itself
    holder.wait()
    WriterLease.acquire(store).check()


def test_writer_lease_on_s3_is_exclusive_renewed_and_lost_when_taken(s3_server, s3_bucket):
    def s3_store():
        return ObjectStore(f"s3://{s3_bucket}/leased", s3_endpoint=s3_server)

    def stored_lease() -> dict:
        return json.loads(s3_store().get(LEASE_KEY))

    # A lease renewed past its ttl_s is still held, and refuses another gateway. The assertions follow a renewal
    # seen in the store: they never depend on a renewal landing within a deadline on a loaded machine.
    first = WriterLease.acquire(s3_store(), ttl_s=6)  # renewed every 2 s
    taken_at = stored_lease()["renewed_at"]
    wait_until(lambda: stored_lease()["renewed_at"] > taken_at + 6, 30, "a renewal past the lease's ttl_s")
    first.check()
    with pytest.raises(StoreInUse, match="served by another gateway"):
        WriterLease.acquire(s3_store(), ttl_s=6, wait_s=0)
    first.release()
    assert not s3_store().exists(LEASE_KEY)

    # Gateways taking a free lease at once: the conditional write lets exactly one of them have it.
    start = threading.Barrier(4)

    def take() -> WriterLease | None:
        store = s3_store()
        start.wait()
        try:
            return WriterLease.acquire(store, ttl_s=60, wait_s=0)
        except StoreInUse:
            return None

    with ThreadPoolExecutor(4) as pool:
        takers = [lease for lease in pool.map(lambda _: take(), range(4)) if lease is not None]
    assert len(takers) == 1 and stored_lease()["owner"] == takers[0].holder["owner"]
    takers[0].release()
    second = WriterLease.acquire(s3_store(), ttl_s=3, wait_s=0)

    # Another gateway takes the lease over (say this one was paused past its ttl): this one stops writing.
    s3_store().put(LEASE_KEY, json.dumps({"owner": "other", "host": "elsewhere", "pid": 7, "renewed_at": time.time(),
                                          "ttl_s": 60}).encode())
    def taken_over() -> bool:
        try:
            second.check()
        except Unavailable as e:
            return "taken by elsewhere pid 7" in str(e)
        return False

    wait_until(taken_over, 10, "the lease loss noticed")
    with pytest.raises(Unavailable, match="lost the writer lease .*taken by elsewhere pid 7"):
        second.check()
    second.release()
    assert json.loads(s3_store().get(LEASE_KEY))["owner"] == "other"  # not deleted by the gateway that lost it

    # A lease left by a gateway that died elsewhere is free once it is ttl_s old.
    s3_store().put(LEASE_KEY, json.dumps({"owner": "dead", "host": "elsewhere", "pid": 7,
                                          "renewed_at": time.time() - 10, "ttl_s": 5}).encode())
    WriterLease.acquire(s3_store(), ttl_s=5, wait_s=0).release()
    assert not s3_store().exists(LEASE_KEY)
