"""jobs/reembed.py against a real gateway (gRPC on 127.0.0.1, a FaceWorker Ray actor, a moto S3 server): real
photos enrolled with FaceNet from S3 are moved to SFace with their ids and metadata, found by image search with
SFace, and a re-run (whole, or after a lost commit record) adds nothing twice."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import grpc
import pytest
import ray
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc

from cluster.faces import FaceNetEmbedder
from cluster.gateway.face_service import FaceService
from cluster.gateway.gallery import Gallery
from cluster.serve import runtime
from cluster.serve.face_servicer import FaceGalleryServicer
from cluster.serve.server import running_server
from cluster.shards.backend import LocalShards
from cluster.storage.object_store import ObjectStore
from cluster.storage.s3_images import S3ImageReader
from jobs.reembed import NO_IMAGE_URI, reembed

DATA = Path(__file__).resolve().parents[1] / "data" / "faces"
PHOTOS = {"obama.jpg": "obama", "obama2.jpg": "obama", "biden.jpg": "biden", "gauss.webp": "gauss",
          "newton.png": "newton", "t1.jpg": "group"}


@pytest.fixture(scope="module")
def served(ray_session, s3_server, tmp_path_factory):
    """(stub, gateway address) of a server with one face worker and shard workers in this process."""
    face_workers = runtime.start_face_workers(1, num_cpus=2, num_gpus=0, cluster_name=f"test-{uuid.uuid4().hex[:8]}")
    store = str(tmp_path_factory.mktemp("store"))
    shards = LocalShards(2, store)
    gallery = Gallery(ObjectStore(store), shards, model=ray.get(face_workers[0].ready.remote()),
                      models=runtime.face_models())
    service = FaceService(gallery, face_workers, s3=S3ImageReader(s3_server))
    try:
        with running_server(gallery, servicer=FaceGalleryServicer(gallery, service)) as (_, port), \
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield gallery_pb2_grpc.GalleryStub(channel), f"127.0.0.1:{port}"
    finally:
        gallery.close()
        shards.stop()
        runtime.stop_face_workers(face_workers)


def _all_faces(stub, collection_id: str) -> dict[str, pb.Face]:
    return {f.face_id: f for f in stub.ListFaces(pb.ListFacesRequest(collection_id=collection_id)).faces}


def test_facenet_collection_moves_to_sface(served, s3_server, s3_bucket, tmp_path):
    stub, gateway = served
    s3 = boto3.client("s3", endpoint_url=s3_server)
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="staff", embedding_model=FaceNetEmbedder.name))
    for name, person in PHOTOS.items():
        s3.put_object(Bucket=s3_bucket, Key=f"photos/{name}", Body=(DATA / name).read_bytes())
        stub.IndexFaces(pb.IndexFacesRequest(
            collection_id="staff", external_image_id=name, metadata={"person": person, "site": "hq"},
            quality_filter=pb.QUALITY_FILTER_NONE,
            image=pb.Image(s3_object=pb.S3Object(bucket=s3_bucket, name=f"photos/{name}"))))
    # Enrolled from bytes: no URI to read it from again.
    stub.IndexFaces(pb.IndexFacesRequest(collection_id="staff", external_image_id="bytes", metadata={"person": "biden"},
                                         image=pb.Image(bytes=(DATA / "biden.jpg").read_bytes())))
    source = _all_faces(stub, "staff")
    assert len(source) == 5 + 6 + 1

    output = str(tmp_path / "out")
    summary = reembed("staff", "staff-sface", output, gateway=gateway, s3_endpoint=s3_server, faces_per_chunk=4,
                      device="cpu")

    assert (summary.faces_in_source, summary.faces_reembedded, summary.faces_already_there) == (12, 11, 0)
    assert summary.faces_failed == {NO_IMAGE_URI: 1} and summary.chunks_committed == 3
    described = stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="staff-sface"))
    assert (described.embedding_model, described.dimension, described.face_count) == ("sface", 128, 11)
    target = _all_faces(stub, "staff-sface")
    moved = {i: f for i, f in source.items() if f.image_uri}
    assert set(target) == set(moved)
    for face_id, face in target.items():
        was = moved[face_id]
        assert (face.external_image_id, face.image_uri, dict(face.metadata), face.detail) == \
            (was.external_image_id, was.image_uri, dict(was.metadata), was.detail)
    # The source is untouched, and SFace finds obama in the target from a photo it never saw.
    assert len(_all_faces(stub, "staff")) == 12
    for collection_id in ("staff", "staff-sface"):
        candidates = stub.SearchFacesByImage(pb.SearchFacesByImageRequest(
            collection_id=collection_id, image=pb.Image(bytes=(DATA / "obama3.jpg").read_bytes()), k=11,
            min_similarity=-1.0)).results[0].candidates
        assert [c.face.metadata["person"] for c in candidates[:2]] == ["obama", "obama"], collection_id
        assert candidates[1].similarity > candidates[2].similarity + 0.2

    # A re-run does nothing; after a lost commit record it redoes that chunk and adds nothing twice.
    again = reembed("staff", "staff-sface", output, gateway=gateway, s3_endpoint=s3_server, faces_per_chunk=4)
    assert (again.faces_already_committed, again.chunks_committed, again.faces_reembedded) == (12, 0, 0)
    state = sorted((tmp_path / "out" / "staff-sface" / "state").glob("*.json"))
    assert len(state) == 3
    state[0].unlink()
    resumed = reembed("staff", "staff-sface", output, gateway=gateway, s3_endpoint=s3_server, faces_per_chunk=4)
    assert resumed.chunks_committed == 1 and resumed.faces_reembedded == 0
    assert resumed.faces_already_there + sum(resumed.faces_failed.values()) == 4
    assert stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="staff-sface")).face_count == 11


def test_refusals(served, tmp_path):
    stub, gateway = served
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="raw", dimension=8))
    with pytest.raises(ValueError, match="raw embeddings"):
        reembed("raw", "raw-sface", str(tmp_path), gateway=gateway)
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="faces"))
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="faces-facenet",
                                                     embedding_model=FaceNetEmbedder.name))
    with pytest.raises(ValueError, match="not sface"):
        reembed("faces", "faces-facenet", str(tmp_path), gateway=gateway, embedding_model="sface")
    with pytest.raises(ValueError, match="target must differ"):
        reembed("faces", "faces", str(tmp_path), gateway=gateway)
    with pytest.raises(grpc.RpcError) as raised:
        reembed("faces", "faces-arc", str(tmp_path), gateway=gateway, embedding_model="arcface")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
