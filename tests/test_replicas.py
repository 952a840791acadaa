"""Replicas of the shard workers on one Ray node: searches go on while a copy is lost, writes reach every copy,
and a copy that missed writes catches up from the store before it serves. (Across Ray nodes:
tests/test_nodes.py.)"""

import pickle
import threading
import time

import grpc
import numpy as np
import pytest
import ray
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from support import wait_until

from cluster.api import convert
from cluster.index.merge import merge_topk
from cluster.index.synthetic import clustered_embeddings
from cluster.serve.server import running_server
from cluster.shards.protocol import SearchRequest
from cluster.shards.worker import ShardWorker
from cluster.storage import manifest as manifests
from cluster.storage.object_store import ObjectStore
from cluster.storage.records import FaceRecord


def _ids(results):
    return [[c.record.face_id for c in q] for q in results.candidates]


def _replica_answers(gallery, collection_id, xq, k):
    """Each replica's own top-k ids, asked of its workers directly (not through the gateway's choice)."""
    request = pickle.dumps(SearchRequest(collection_id, xq, k, 0, None, None, k))
    answers = []
    for workers in gallery.shards.replicas:
        replies = [pickle.loads(r) for r in ray.get([w.search.remote(request) for w in workers])]
        _, _, records = merge_topk([(r.D, r.I, r.records) for r in replies], k)
        answers.append([[record.face_id for record in row] for row in records])
    return answers


@pytest.mark.slow
def test_searches_go_on_while_a_copy_is_lost_and_it_catches_up_on_the_writes_it_missed(galleries, tmp_path):
    gallery = galleries.start(str(tmp_path), num_workers=2, replicas=2)
    xb = clustered_embeddings(600, 16, seed=71)
    gallery.create_collection("c", dimension=16)  # every copy the backend keeps: 2
    gallery.add("c", [FaceRecord(f"f{i}") for i in range(400)], xb[:400])
    assert gallery.describe("c")[0].replicas == 2 and gallery.live_replicas("c") == 2
    xq = xb[:40]
    expected = _ids(gallery.search("c", xq, 5))
    assert _replica_answers(gallery, "c", xq, 5) == [expected, expected]

    with running_server(gallery) as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gallery_pb2_grpc.GalleryStub(channel)
        request = pb.SearchByEmbeddingRequest(collection_id="c", k=5, queries=[convert.embedding(x) for x in xq])
        failures, answers, stop = [], [], threading.Event()

        def search_without_pause():
            while not stop.is_set():
                try:
                    response = stub.SearchByEmbedding(request, timeout=10)
                    answers.append([[c.face.face_id for c in r.candidates] for r in response.results])
                except grpc.RpcError as e:
                    failures.append(e.code())

        searchers = [threading.Thread(target=search_without_pause) for _ in range(2)]
        for t in searchers:
            t.start()
        try:
            time.sleep(1)
            ray.kill(gallery.shards.replicas[0][1], no_restart=True)  # lost for good: created anew
            wait_until(lambda: gallery.live_replicas("c") == 1, 30, "the lost copy noticed")
            # Writes while a copy is away go to the other copy and reach the lost one when it is back.
            gallery.add("c", [FaceRecord(f"f{i}") for i in range(400, 600)], xb[400:])
            gallery.delete_faces("c", ["f0", "f1"])
            wait_until(lambda: gallery.shards.replacements == 1 and gallery.live_replicas("c") == 2, 90,
                       "the lost copy created anew and caught up")
            time.sleep(1)
        finally:
            stop.set()
            for t in searchers:
                t.join()
        assert failures == [], f"{len(failures)} searches failed with a replica left: {set(failures)}"
        assert len(answers) > 20
        # Every answer is whole: each probe finds itself first, whichever partition holds it (f0 and f1 are
        # deleted midway).
        assert all([q[0] for q in a[2:]] == [f"f{i}" for i in range(2, 40)] for a in answers)
        description = stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="c"), timeout=10)
        assert description.replicas == 2 and description.live_replicas == 2
        assert list(description.unavailable_partitions) == []

    now = _ids(gallery.search("c", xb[:40], 5))
    assert "f0" not in {f for q in now for f in q} and now[2][0] == "f2"
    assert _replica_answers(gallery, "c", xb[400:440], 5) == [_ids(gallery.search("c", xb[400:440], 5))] * 2
    assert [q[0] for q in _ids(gallery.search("c", xb[400:440], 1))] == [f"f{i}" for i in range(400, 440)]


def test_stopped_replicas_give_their_cpus_back(galleries, tmp_path):
    """The copies of a worker are the bundles of a placement group; stopping the shards removes it too, or its
    CPUs stay reserved for as long as the Ray job lives, and workers started later wait for them forever (seen
    as a hang of the tests after the replicated ones)."""
    def groups() -> dict[str, str]:
        return {group: info["state"] for group, info in ray.util.placement_group_table().items()}

    before = groups()
    gallery = galleries.start(str(tmp_path), num_workers=2, replicas=2)
    made = [group for group in groups() if group not in before]
    assert len(made) == 2 and all(groups()[group] == "CREATED" for group in made)  # one per worker
    galleries.stop(gallery)
    wait_until(lambda: all(groups().get(group, "REMOVED") == "REMOVED" for group in made), 30,
               "the placement groups removed")


def test_a_collection_keeps_the_replicas_it_asked_for(galleries, tmp_path):
    gallery = galleries.start(str(tmp_path), num_workers=1, replicas=2)
    gallery.create_collection("one", dimension=8, replicas=1)
    gallery.create_collection("two", dimension=8)
    gallery.add("one", [FaceRecord("a")], np.ones((1, 8), np.float32))
    held = ray.get([workers[0].ready.remote() for workers in gallery.shards.replicas])
    assert set(held[0]) == {"one", "two"} and set(held[1]) == {"two"}
    assert gallery.live_replicas("one") == 1 and gallery.live_replicas("two") == 2
    with running_server(gallery) as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gallery_pb2_grpc.GalleryStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.CreateCollection(pb.CreateCollectionRequest(collection_id="three", dimension=8, replicas=3))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "replicas" in e.value.details()
        assert stub.CreateCollection(pb.CreateCollectionRequest(
            collection_id="three", dimension=8, replicas=1)).collection.replicas == 1


def test_a_follower_catches_up_from_the_store(galleries, tmp_path):
    """ShardWorker.catch_up as a plain class: adds, deletes, a training and a deletion made elsewhere."""
    writer = galleries.start(str(tmp_path), backend="local", num_workers=1, background_maintenance=False)
    writer.create_collection("c", dimension=16)
    writer.create_collection("gone", dimension=16)
    xb = clustered_embeddings(1200, 16, seed=72)
    writer.add("c", [FaceRecord(f"f{i}") for i in range(600)], xb[:600])
    follower = ShardWorker(0, 1, str(tmp_path))  # a copy that started now
    assert follower.sizes("c") == {0: 600}

    writer.add("c", [FaceRecord(f"f{i}") for i in range(600, 1200)], xb[600:])
    writer.delete_faces("c", ["f5"])
    writer.train("c")
    writer.delete_collection("gone")
    assert follower.sizes("c") == {0: 600} and "gone" in follower.ready()  # it has not looked yet
    follower.catch_up()
    assert follower.ready() == {"c": {0: 1199}}
    live = writer.collections.get("c").live
    nprobe = 8
    Dq, Iq = live.quantizer.search(xb[:20], nprobe)
    request = pickle.dumps(SearchRequest("c", xb[:20], 3, live.version, Iq, Dq, 3))
    mine = pickle.loads(follower.search(request))
    theirs = pickle.loads(writer.shards.workers[0].search(request))
    np.testing.assert_array_equal(mine.I, theirs.I)
    np.testing.assert_allclose(mine.D, theirs.D, atol=1e-6)
    assert follower.catch_up() == 1  # level: nothing to do


def test_a_worker_loading_while_the_writer_collects_garbage_loads_the_newer_manifest(galleries, tmp_path):
    """A compaction commits a snapshot and deletes the segments it folded in; a worker that read the manifest
    before finds them gone and loads from the newer one (a restarted replica under writes, seen in chaos.py)."""
    writer = galleries.start(str(tmp_path), backend="local", num_workers=1, background_maintenance=False,
                             max_segments=3)
    writer.create_collection("c", dimension=8)
    xb = clustered_embeddings(40, 8, seed=73)
    writer.add("c", [FaceRecord("f0")], xb[:1])
    writer.add("c", [FaceRecord("f1")], xb[1:2])
    before = manifests.load(ObjectStore(str(tmp_path)), "c")
    assert len(before.partitions[0].segments) == 2
    for i in range(2, 40):  # compactions: every segment `before` names is collected
        writer.add("c", [FaceRecord(f"f{i}")], xb[i:i + 1])
    store = ObjectStore(str(tmp_path))
    assert not any(store.exists(s.key) for s in before.partitions[0].segments)

    follower = ShardWorker(0, 1, str(tmp_path))
    follower.drop_collection("c")
    follower.open_collection(before.to_json())  # names objects that are gone
    assert follower.sizes("c") == {0: 40}
    assert sorted(r.face_id for r in follower.get_faces("c", {0: [f"f{i}" for i in range(40)]}, False)) == \
        sorted(f"f{i}" for i in range(40))
