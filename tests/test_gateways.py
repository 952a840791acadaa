"""More than one gateway per store: read gateways follow the writer's commits, and a standby takes over the
writer lease when the writer dies."""

import os
import re
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from support import Served, serving_address, stop_process, wait_until

from cluster.api import convert
from cluster.errors import FailedPrecondition, NotFound
from cluster.index.synthetic import clustered_embeddings
from cluster.storage.object_store import ObjectStore
from cluster.storage.records import FaceRecord


def _ids(results):
    return [[c.record.face_id for c in q] for q in results.candidates]


def test_a_reader_follows_the_writers_commits_and_writes_nothing(galleries, tmp_path):
    store = str(tmp_path)
    writer = galleries.start(store, backend="local", background_maintenance=False, default_train_threshold=10**6)
    reader = galleries.start(store, backend="local", read_only=True, follow_interval_s=0.05)
    assert reader.read_only and not writer.read_only
    xb = clustered_embeddings(1500, 16, seed=91)
    writer.create_collection("c", dimension=16)
    writer.add("c", [FaceRecord(f"f{i}", metadata={"n": str(i)}) for i in range(1000)], xb[:1000])

    def level():
        try:
            return reader.describe("c")[0] == writer.describe("c")[0]
        except NotFound:
            return False

    wait_until(level, 10, "the reader level with the writer")
    assert _ids(reader.search("c", xb[:50], 5)) == _ids(writer.search("c", xb[:50], 5))
    assert reader.get_faces("c", ["f7"])[0][0].metadata == {"n": "7"}

    writer.delete_faces("c", ["f0"])
    writer.add("c", [FaceRecord(f"f{i}") for i in range(1000, 1500)], xb[1000:])
    writer.train("c")  # a new index version: the reader's workers catch up before it switches
    wait_until(level, 10, "the reader on the trained index")
    assert reader.describe("c")[1].live.version == 1
    searched = reader.search("c", xb[:50], 5, nprobe=16)
    assert _ids(searched) == _ids(writer.search("c", xb[:50], 5, nprobe=16))
    assert "f0" not in {f for q in _ids(searched) for f in q}

    before = sorted(ObjectStore(store).list(""))
    for write in (lambda: reader.add("c", [FaceRecord("x")], xb[:1]), lambda: reader.delete_faces("c", ["f1"]),
                  lambda: reader.create_collection("d", dimension=16), lambda: reader.delete_collection("c"),
                  lambda: reader.train("c")):
        with pytest.raises(FailedPrecondition, match="reads only"):
            write()
    assert sorted(ObjectStore(store).list("")) == before  # not an object more, nor less

    writer.delete_collection("c")
    wait_until(lambda: reader.list_collections()[0] == [], 10, "the reader forgot the collection")
    with pytest.raises(NotFound):
        reader.search("c", xb[:1], 1)


def _serve(store, log, *flags):
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(store), "--port", "0",
         "--num-shards", "2", "--shard-num-cpus", "0.5", "--face-workers", "0", "--metrics-port", "0", *flags],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""},
        start_new_session=True)


@pytest.mark.slow
def test_a_standby_takes_over_when_the_writer_dies_and_a_reader_keeps_serving(tmp_path):
    store = tmp_path / "store"
    writer = Served(store, tmp_path / "writer.log")
    # Both bind a port the kernel picks (--port 0), read from their logs: the reader's once it serves, the
    # standby's once it has taken over.
    standby = _serve(store, tmp_path / "standby.log", "--role", "standby")
    reader = _serve(store, tmp_path / "reader.log", "--role", "reader", "--audit-store",
                    str(tmp_path / "reader-audit"), "--follow-interval-s", "0.2")
    try:
        md = writer.metadata
        stub = gallery_pb2_grpc.GalleryStub(writer.channel)
        xb = clustered_embeddings(300, 16, seed=92)
        stub.CreateCollection(pb.CreateCollectionRequest(collection_id="c", dimension=16), metadata=md)
        stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="c", faces=[
            pb.NewFace(face_id=f"f{i}", embedding=convert.embedding(x)) for i, x in enumerate(xb[:200])]),
            metadata=md)
        search = pb.SearchByEmbeddingRequest(collection_id="c", k=1, queries=[convert.embedding(x) for x in xb[:20]],
                                             purpose="test", case_id="failover")

        wait_until(lambda: serving_address(tmp_path / "reader.log"), 120, "the reader serving")
        with grpc.insecure_channel(serving_address(tmp_path / "reader.log")) as reader_channel:
            reads = gallery_pb2_grpc.GalleryStub(reader_channel)

            def reader_finds(n):
                try:
                    return reads.DescribeCollection(pb.DescribeCollectionRequest(collection_id="c"), metadata=md,
                                                    timeout=5).face_count == n
                except grpc.RpcError:
                    return False

            wait_until(lambda: reader_finds(200), 120, "the reader serving the writer's faces")
            got = reads.SearchByEmbedding(search, metadata=md, timeout=10)
            assert [r.candidates[0].face.face_id for r in got.results] == [f"f{i}" for i in range(20)]
            with pytest.raises(grpc.RpcError) as e:
                reads.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="c", faces=[
                    pb.NewFace(face_id="x", embedding=convert.embedding(xb[0]))]), metadata=md, timeout=10)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            wait_until(lambda: "waiting for the writer lease" in (tmp_path / "standby.log").read_text(), 120,
                       "the standby ready")
            os.kill(writer.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: serving_address(tmp_path / "standby.log"), 60, "the standby serving as the writer")
            with grpc.insecure_channel(serving_address(tmp_path / "standby.log")) as standby_channel:
                takeover = gallery_pb2_grpc.GalleryStub(standby_channel)

                def standby_serves():
                    try:
                        takeover.DescribeCollection(pb.DescribeCollectionRequest(collection_id="c"), metadata=md,
                                                    timeout=2)
                        return True
                    except grpc.RpcError:
                        return False

                wait_until(standby_serves, 60, "the standby serving as the writer")
                takeover_s = time.monotonic() - killed
                got = takeover.SearchByEmbedding(search, metadata=md, timeout=10)
                assert [r.candidates[0].face.face_id for r in got.results] == [f"f{i}" for i in range(20)]
                takeover.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="c", faces=[
                    pb.NewFace(face_id=f"f{i}", embedding=convert.embedding(x))
                    for i, x in enumerate(xb[200:], start=200)]), metadata=md, timeout=30)
            wait_until(lambda: reader_finds(300), 30, "the reader following the new writer")
            got = reads.SearchByEmbedding(pb.SearchByEmbeddingRequest(
                collection_id="c", k=1, queries=[convert.embedding(x) for x in xb[280:300]], purpose="test",
                case_id="failover"), metadata=md, timeout=10)
            assert [r.candidates[0].face.face_id for r in got.results] == [f"f{i}" for i in range(280, 300)]
        log = (tmp_path / "standby.log").read_text()
        assert re.search(r"took over as the writer [0-9.]+ s after the lease was free", log), log[-2000:]
        assert takeover_s < 30, f"the standby took {takeover_s:.1f} s to serve"
        np.testing.assert_allclose([r.candidates[0].similarity for r in got.results], 1.0, atol=1e-3)
    finally:
        for process in (standby, reader):
            try:
                stop_process(process, 60, process_group=True)
            except subprocess.TimeoutExpired:
                pass
        writer.stop()
