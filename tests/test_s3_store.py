"""The object store: a local folder, and a real S3 server on 127.0.0.1 through pyarrow's S3 filesystem."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.records import FaceRecord
from cluster.store import ObjectStore
from cluster.synthetic import clustered_embeddings
from support import S3_CREDENTIALS


def test_object_store_on_s3(s3_server, s3_bucket):
    store = ObjectStore(f"s3://{s3_bucket}/root", s3_endpoint=s3_server)
    store.put("a/b.bin", b"\x00\x01")
    store.put("a/c.bin", b"x" * 1_000_000)
    assert store.get("a/b.bin") == b"\x00\x01" and len(store.get("a/c.bin")) == 1_000_000
    assert store.list("a/") == ["a/b.bin", "a/c.bin"] and store.exists("a/b.bin")
    store.delete_prefix("a/")
    assert store.list("") == [] and not store.exists("a/b.bin")


def test_write_killed_before_its_rename_leaves_nothing_readers_see(tmp_path):
    store = ObjectStore(str(tmp_path))
    segment = pa.table({"face_id": ["a", "b"]})
    sink = pa.BufferOutputStream()
    pq.write_table(segment, sink)
    store.put("segments/1.parquet", sink.getvalue().to_pybytes())
    # The process dies (SIGKILL, no cleanup) with the whole object written but not yet renamed into place.
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal
from cluster.store import ObjectStore
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
