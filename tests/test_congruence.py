"""Congruence: the same operations against in-process shards, Ray shards and one flat FAISS index give the
same ids and scores (as qdrant-client's congruence tests hold its local mode to its server)."""

import numpy as np
import pytest

from cluster.index import vectors
from cluster.index.shard_index import exact_index, exact_search
from cluster.index.synthetic import clustered_embeddings, noisy_probes
from cluster.storage.records import FaceRecord

D = 32
BACKENDS = ["local", "ray"]


def _records(ids):
    return [FaceRecord(f, f"img-{f}", metadata={"n": f[5:]}) for f in ids]


def _answers(gallery, xq, k):
    results = gallery.search("c", xq, k)
    return ([[c.record.face_id for c in q] for q in results.candidates],
            np.array([[c.similarity for c in q] for q in results.candidates], dtype=np.float32))


def _enroll(gallery, xb):
    """Adds in batches, deletes some, adds more: the live set is every face but the deleted ones."""
    gallery.create_collection("c", dimension=D)
    ids = [f"face-{i}" for i in range(len(xb))]
    half = len(xb) // 2
    for start in range(0, half, 500):
        gallery.add("c", _records(ids[start:start + 500]), xb[start:start + 500])
    deleted = ids[:half:7]
    gone, unknown = gallery.delete_faces("c", deleted + ["never-there"])
    assert sorted(gone) == sorted(deleted) and unknown == ["never-there"]
    gallery.add("c", _records(ids[half:]), xb[half:])
    return [i for i in range(len(xb)) if ids[i] not in set(deleted)]


@pytest.fixture(scope="module")
def data():
    xb = clustered_embeddings(3000, D, seed=41)
    xq, _ = noisy_probes(xb, 40, seed=42)
    return xb, xq


@pytest.fixture
def flat_answers(data):
    """One exact index of the partitions' kind over the live faces, as the gallery stores them (fp16, normalised)."""
    xb, xq = data
    live = [i for i in range(len(xb)) if not (i < len(xb) // 2 and i % 7 == 0)]
    index = exact_index(D)
    index.add(vectors.to_stored(vectors.normalize(xb[live])).astype(np.float32))
    Dref, Iref = exact_search(index, vectors.normalize(xq), 20)
    return [[f"face-{live[j]}" for j in row] for row in Iref], Dref


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_search_is_one_flat_index(galleries, tmp_path, data, flat_answers, backend):
    xb, xq = data
    gallery = galleries.start(str(tmp_path), num_workers=3, backend=backend, background_maintenance=False)
    _enroll(gallery, xb)
    ids, scores = _answers(gallery, xq, 20)
    assert ids == flat_answers[0]
    np.testing.assert_array_equal(scores, flat_answers[1])


def test_local_and_ray_shards_answer_alike(galleries, tmp_path, data):
    """Every read of a store written through one backend is the same through the other, IVF-PQ included."""
    xb, xq = data
    local = galleries.start(str(tmp_path / "a"), num_workers=2, backend="local", background_maintenance=False,
                            default_train_threshold=1000)
    ray_ = galleries.start(str(tmp_path / "b"), num_workers=2, backend="ray", background_maintenance=False,
                           default_train_threshold=1000)
    for gallery in (local, ray_):
        _enroll(gallery, xb)
    exact = _answers(local, xq, 20)
    assert _answers(ray_, xq, 20)[0] == exact[0]
    np.testing.assert_array_equal(_answers(ray_, xq, 20)[1], exact[1])
    for gallery in (local, ray_):
        assert gallery.list_faces("c", 4096)[0] == local.list_faces("c", 4096)[0]
        assert gallery.get_faces("c", ["face-1", "face-0", "nobody"]) == local.get_faces(
            "c", ["face-1", "face-0", "nobody"])

    # Trained through the in-process backend, then served by Ray shards from the same store, and back.
    assert local.train("c") == 1
    trained = _answers(local, xq, 20)
    store = local.store.uri
    galleries.stop(local)
    served = galleries.start(store, num_workers=2, backend="ray", background_maintenance=False)
    assert served.describe("c")[0].index_version == 1
    assert _answers(served, xq, 20)[0] == trained[0]
    np.testing.assert_array_equal(_answers(served, xq, 20)[1], trained[1])
    assert served.add("c", _records(["late"]), xq[:1]) == (["late"], [])
    galleries.stop(served)
    reopened = galleries.start(store, num_workers=2, backend="local", background_maintenance=False)
    assert [q[0] for q in _answers(reopened, xq[:1], 1)[0]] == ["late"]
    assert reopened.describe("c")[0].face_count == ray_.describe("c")[0].face_count + 1
