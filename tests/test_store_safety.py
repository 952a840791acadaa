"""Ids cannot escape their place in the store: on a local folder and on a real S3 server (moto on 127.0.0.1).

Regression tests for a hostile caller's findings: a collection named ".." put its manifest at the store
root and deleting it deleted the whole store; "nl\\n" passed a pattern ending in `$`.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import boto3
import grpc
import pytest
from gallery.v1 import gallery_pb2 as pb
from support import S3_CREDENTIALS

from cluster.api import convert
from cluster.index.synthetic import clustered_embeddings
from cluster.storage import manifest as manifests
from cluster.storage.manifest import UnsafeStore
from cluster.storage.object_store import ObjectStore, UnsafeKey, check_key
from cluster.storage.records import FaceRecord

UNSAFE_IDS = [".", "..", "...", "nl\n", "a/b", "../a", "a\\b", "", "x" * 256, "a\x00b", " a", "a b", "é"]
SAFE_IDS = ["staff", "a.b-c_d", "A", "x" * 255, ".hidden", "a..b"]
UNSAFE_KEYS = ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a/..", "..", ".", "a\\b", "a/b\n", "a\x00", ""]


@pytest.mark.parametrize("collection_id", UNSAFE_IDS)
def test_unsafe_collection_ids_are_refused(collection_id):
    with pytest.raises(UnsafeKey, match="collection_id"):
        manifests.check_collection_id(collection_id)
    with pytest.raises(UnsafeKey):
        manifests.manifest_key(collection_id)


@pytest.mark.parametrize("collection_id", SAFE_IDS)
def test_safe_collection_ids_stay_in_their_folder(collection_id):
    assert manifests.manifest_key(collection_id) == f"collections/{collection_id}/manifest.json"


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_keys_that_leave_their_place_are_refused(key):
    with pytest.raises(UnsafeKey):
        check_key(key)


def test_prefixes_name_folders_below_the_root():
    assert check_key("", prefix=True) == "" and check_key("collections/", prefix=True) == "collections/"
    for prefix in ("/", "../", "a//", "a/../"):
        with pytest.raises(UnsafeKey):
            check_key(prefix, prefix=True)


@dataclass
class Place:
    store: ObjectStore
    objects: Callable[[], list[str]]  # every object around the store: its folder's parent, or the whole bucket
    plant: Callable[[str, bytes], None]  # writes a key as an earlier version could have, past the key checks


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path) -> Place:
    if request.param == "local":
        (tmp_path / "outside.txt").write_bytes(b"keep")
        store = ObjectStore(str(tmp_path / "store"))

        def plant(key: str, data: bytes) -> None:
            path = os.path.join(store.root, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

        return Place(store, lambda: sorted(str(p) for p in tmp_path.rglob("*") if p.is_file()), plant)
    endpoint, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.put_object(Bucket=bucket, Key="outside.txt", Body=b"keep")
    return Place(ObjectStore(f"s3://{bucket}/store", s3_endpoint=endpoint),
                 lambda: sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])),
                 lambda key, data: client.put_object(Bucket=bucket, Key=f"store/{key}", Body=data))


def test_the_store_refuses_traversal(place):
    store, objects = place.store, place.objects
    store.put("collections/c/manifest.json", b"{}")
    before = objects()
    for key in UNSAFE_KEYS:
        with pytest.raises(UnsafeKey):
            store.put(key, b"overwritten")
        with pytest.raises(UnsafeKey):
            store.get(key)
        with pytest.raises(UnsafeKey):
            store.delete(key)
        with pytest.raises(UnsafeKey):
            store.exists(key)
    for prefix in ("", "/", "../", "collections/../", "collections"):
        with pytest.raises(UnsafeKey):
            store.delete_prefix(prefix)
    with pytest.raises(UnsafeKey):
        store.list("../")
    assert objects() == before
    assert store.get("collections/c/manifest.json") == b"{}"


def _enrolled(gallery, n=50):
    xb = clustered_embeddings(n, 8, seed=5)
    gallery.create_collection("staff", dimension=8)
    gallery.add("staff", [FaceRecord(f"f{i}") for i in range(n)], xb)
    return xb


def test_the_dot_dot_attack_over_grpc_changes_nothing(stub, gallery):
    xb = _enrolled(gallery)
    before = gallery.store.list("")
    for collection_id in ("..", ".", "nl\n", "a/b", "../staff", "staff/.."):
        for call, request in (
                (stub.CreateCollection, pb.CreateCollectionRequest(collection_id=collection_id, dimension=8)),
                (stub.AddEmbeddings, pb.AddEmbeddingsRequest(collection_id=collection_id, faces=[pb.NewFace(
                    face_id="x", embedding=convert.embedding(xb[0]))])),
                (stub.DeleteCollection, pb.DeleteCollectionRequest(collection_id=collection_id)),
                (stub.DescribeCollection, pb.DescribeCollectionRequest(collection_id=collection_id)),
                (stub.DeleteFaces, pb.DeleteFacesRequest(collection_id=collection_id, face_ids=["f1"]))):
            with pytest.raises(grpc.RpcError) as raised:
                call(request)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, collection_id)
            assert "collection_id" in raised.value.details()
    assert gallery.store.list("") == before
    assert gallery.describe("staff")[0].face_count == 50


def test_the_dot_dot_attack_on_s3_changes_nothing(galleries, s3_server, s3_bucket):
    gallery = galleries.start(f"s3://{s3_bucket}/gallery", s3_endpoint=s3_server, env_vars=S3_CREDENTIALS)
    _enrolled(gallery)
    before = gallery.store.list("")
    for collection_id in ("..", "nl\n", "a/b"):
        with pytest.raises(UnsafeKey):
            gallery.create_collection(collection_id, dimension=8)
        with pytest.raises(UnsafeKey):
            gallery.delete_collection(collection_id)
    assert gallery.store.list("") == before


@pytest.mark.parametrize("key", ["collections/../manifest.json", "collections/a b/p0/add-00000001.parquet",
                                 "collections/a\\b/manifest.json", "collections/nl\n/manifest.json", "manifest.json"])
def test_a_store_holding_an_unsafe_name_is_refused_at_open(place, key):
    store = place.store
    if "\n" in key and not store.is_local:
        pytest.skip("moto's S3 server answers 404 to a key holding a newline")
    good = manifests.CollectionManifest("staff", 8, 2, 100, 0.0)
    manifests.save(store, good)
    assert [m.collection_id for m in manifests.load_all(store)] == ["staff"]
    place.plant(key, good.to_json())
    with pytest.raises(UnsafeStore, match="manifest.json at its root|is not a safe collection id"):
        manifests.load_all(store)


def test_a_manifest_naming_another_collection_is_refused(tmp_path):
    store = ObjectStore(str(tmp_path))
    (tmp_path / "collections" / "staff").mkdir(parents=True)
    (tmp_path / "collections" / "staff" / "manifest.json").write_bytes(
        manifests.CollectionManifest("..", 8, 2, 100, 0.0).to_json())
    with pytest.raises(UnsafeStore, match="names collection '..'"):
        manifests.load_all(store)


def test_gallery_serve_refuses_an_unsafe_store_before_starting(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_bytes(b"{}")  # where the ".." collection's manifest landed
    served = subprocess.run([sys.executable, "-m", "cluster.serve.cli", "serve", "--store", str(tmp_path / "store"),
                             "--port", "0", "--metrics-port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert served.returncode == 1
    assert "manifest.json at its root" in served.stderr and "Traceback" not in served.stderr
