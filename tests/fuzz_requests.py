"""Hostile gallery.v1 requests, shared by the fuzz test (tests/test_fuzz.py) and the longer campaign
(benchmarks/fuzz.py): Hypothesis strategies for every RPC, the server they are sent to, and what must hold.

The strategies state what a caller may send: well-formed messages with boundary and hostile values (unicode,
NUL, "..", "/", ids of 256 characters, k and counts past their limits, NaN, infinity and 3e38 in embeddings,
wrong dimensions, forged page tokens, broken and oversized images, S3 objects that do not exist), raw bytes
that need not parse, unknown methods, and any caller: every role, a token that covers another collection, a
revoked, forged or missing token. The target is a real server on 127.0.0.1 (shard and face workers as Ray
actors, the TrustInterceptor with tokens and the audit log) holding two seeded collections. What must hold
for all requests: no INTERNAL or UNKNOWN, the server healthy, and the seeded data unchanged. Requests that
may change data never name a seeded collection, so any change to them is a bug, not a permitted write.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import struct
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import ray
from gallery.v1 import gallery_pb2 as pb
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from cluster.api import convert
from cluster.gateway.face_service import FaceService
from cluster.gateway.gallery import Gallery
from cluster.index.synthetic import clustered_embeddings
from cluster.serve import runtime
from cluster.serve.audit import AuditLog
from cluster.serve.face_servicer import FaceGalleryServicer
from cluster.serve.interceptors import GALLERY_PREFIX, TrustInterceptor
from cluster.serve.server import running_server
from cluster.serve.tokens import TokenRegistry
from cluster.shards.ray_shards import RayShards
from cluster.storage.object_store import ObjectStore
from cluster.storage.s3_images import S3ImageReader

RPCS = tuple(pb.DESCRIPTOR.services_by_name["Gallery"].methods_by_name)
D = 8  # dimension of the seeded raw-embedding collection
SEEDED = ("seeded", "faces")  # a raw-embedding collection of 40 faces, and an empty face collection
MAX_IMAGE_BYTES = 128 * 1024  # the target's limits: small, so that requests over them stay cheap
MAX_S3_IMAGE_BYTES = 256 * 1024
BUCKET = "fuzz-images"
FACE_PHOTO = Path(__file__).resolve().parent / "data" / "faces" / "biden.jpg"  # one face, 67 kB
# INTERNAL and UNKNOWN are bugs; UNAVAILABLE is one too here, where every worker, moto and the audit log are up.
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE)


# ---- values ----------------------------------------------------------------------------------------------

HOSTILE_TEXT = ["", " ", ".", "..", "/", "a/b", "../x", "..\\x", "nl\n", "\0", "a\0b", "é", "\u202e", "😀",
                "x" * 255, "x" * 256, "audit", "audit/HEAD", "CON", "%2e%2e", "*", "seeded ", "SEEDED"]
texts = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=20), st.text(max_size=300))
any_ids = st.one_of(st.sampled_from(SEEDED + ("scratch", "scratch.2", "f-0", "_")), texts,
                    st.text("abcXYZ019_.-", min_size=1, max_size=6))
new_ids = any_ids.filter(lambda c: c not in SEEDED)  # ids of requests that may change what they name
u32 = st.one_of(st.sampled_from([0, 1, 2, 10, 100, 999, 1000, 1001, 1024, 1025, 4096, 4097, 2**31, 2**32 - 1]),
                st.integers(0, 2**32 - 1))
u64 = st.one_of(st.sampled_from([0, 1, 255, 256, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))
floats32 = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 3e38, -3e38, 1e-45, math.nan, math.inf, -math.inf]),
                     st.floats(width=32))
optional_float = st.one_of(st.none(), floats32)
enums = st.one_of(st.integers(0, 6), st.integers(-2**31, 2**31 - 1))


@st.composite
def embeddings(draw) -> pb.Embedding:
    """Packed float32 of the seeded dimension, the face model's, or any other; a dimension that may lie."""
    n = draw(st.sampled_from([0, 1, D - 1, D, D + 1, 512]))
    if draw(st.booleans()):
        values = [draw(floats32)] * n  # all 3e38, all zeros, all NaN, ...
    else:
        values = draw(st.lists(floats32, min_size=min(n, 12), max_size=min(n, 12))) + [1.0] * max(n - 12, 0)
    data = struct.pack(f"<{len(values)}f", *values)
    data = draw(st.one_of(st.just(data), st.binary(max_size=40), st.just(data[:-1])))
    return pb.Embedding(values=data, dimension=draw(st.one_of(st.just(n), u32)))


def _repeated(element, sizes: list[int]):
    """Lists of a few elements, or of one element repeated to a size at or past a limit."""
    return st.one_of(st.lists(element, max_size=3),
                     st.builds(lambda e, n: [e] * n, element, st.sampled_from(sizes)))


face_details = st.builds(pb.FaceDetail, bounding_box=st.builds(pb.BoundingBox, left=floats32, top=floats32,
                                                                 width=floats32, height=floats32),
                         confidence=floats32, quality=floats32)
metadata = st.dictionaries(texts, texts, max_size=3)
new_faces = st.builds(pb.NewFace, face_id=texts, external_image_id=texts, metadata=metadata,
                      embedding=embeddings(), detail=st.one_of(st.none(), face_details), image_uri=texts)
face_ids = _repeated(st.one_of(texts, st.sampled_from(["s0", "s1", "s39"])), [4096, 4097])


@st.composite
def packed_faces(draw) -> pb.PackedFaces:
    """Ids with embeddings of the seeded dimension or another, as many rows as ids or not, any values."""
    ids = draw(_repeated(st.one_of(texts, st.sampled_from(["s0", "s1", "s39", ""])), [10_000, 10_001]))
    dimension = draw(st.one_of(st.sampled_from([0, 1, D, 512]), u32))
    rows = draw(st.sampled_from([len(ids), max(len(ids) - 1, 0), len(ids) + 1]))
    width = min(dimension, 4096) if rows * min(dimension, 4096) <= 2_000_000 else 1  # 8 MB at most
    row = struct.pack(f"<{width}f", *[draw(floats32)] * width)
    data = draw(st.one_of(st.just(row * rows), st.binary(max_size=40), st.just((row * rows)[:-1])))
    return pb.PackedFaces(face_ids=ids, dimension=dimension, embeddings=data)



def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


page_tokens = st.one_of(
    texts,
    st.sampled_from([_b64(t.encode()) for t in ("-1:-1", "0:1e23", "0:-100", "1:0", "0:7", "99:0")]),
    st.binary(max_size=48).map(_b64),  # the size of a real token, any contents
    st.builds(lambda p, s: _b64(f"{p}:{s}".encode()), st.integers(-2**64, 2**64), st.integers(-2**64, 2**64)))


def _encoded(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(rgb).save(out, fmt)
    return out.getvalue()


VALID_IMAGES = [_encoded((1, 1), "PNG", 0), _encoded((17, 9), "JPEG", 1), _encoded((64, 48), "WEBP", 2),
                FACE_PHOTO.read_bytes()]


@st.composite
def _damaged(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    at = draw(st.integers(0, len(data) - 1))
    if draw(st.booleans()):
        return bytes(data[:at])  # truncated
    data[at:at + 8] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


s3_objects = st.builds(pb.S3Object, bucket=st.one_of(st.sampled_from([BUCKET, "no-such-bucket", "", "..", "A_B"]),
                                                     texts),
                       name=st.one_of(st.sampled_from(["face.jpg", "junk", "big", "", "../face.jpg"]), texts),
                       version=st.one_of(st.just(""), texts))
images = st.one_of(
    st.none(),
    st.builds(pb.Image),  # neither bytes nor an object
    st.builds(lambda b: pb.Image(bytes=b), st.one_of(st.sampled_from(VALID_IMAGES), _damaged(), st.binary(max_size=300))),
    # over the limit by a JPEG's size; twice, as RESOURCE_EXHAUSTED is the rarest refusal to reach
    st.just(pb.Image(bytes=VALID_IMAGES[1] + bytes(MAX_IMAGE_BYTES))),
    st.just(pb.Image(bytes=VALID_IMAGES[1] + bytes(MAX_IMAGE_BYTES))),
    st.builds(lambda o: pb.Image(s3_object=o), s3_objects))
timestamps = st.one_of(st.none(), st.builds(timestamp_pb2.Timestamp, seconds=st.integers(-2**63, 2**63 - 1),
                                            nanos=st.integers(-2**31, 2**31 - 1)),
                       st.builds(timestamp_pb2.Timestamp, seconds=st.integers(0, 2**32)))
# target_fpir: unset (0), valid, and out of range or not a number.
fpirs = st.one_of(st.just(0.0), st.sampled_from([1e-6, 0.01, 0.5, 1.0, -0.1, 2.0, math.nan, math.inf]),
                  st.floats(width=64))
# target_recall: 0 (the default), in range, and the edges and non-numbers outside it.
recall_targets = st.one_of(st.just(0.0), st.floats(0, 1), st.sampled_from([-0.0, 1e-300, 1.0 + 1e-15, -1.0, 2.0,
                                                                            math.nan, math.inf, -math.inf]))
_why = dict(purpose=st.one_of(st.just("fuzz"), texts), case_id=st.one_of(st.just("case-1"), texts))

MESSAGES = {
    "CreateCollection": st.builds(pb.CreateCollectionRequest, collection_id=new_ids,
                                  dimension=st.one_of(st.sampled_from([0, 1, D, 4096, 4097]), u32),
                                  train_threshold=u64, default_fpir=fpirs, target_recall=recall_targets),
    "DescribeCollection": st.builds(pb.DescribeCollectionRequest, collection_id=any_ids),
    "ListCollections": st.builds(pb.ListCollectionsRequest, max_results=u32, next_token=page_tokens),
    "DeleteCollection": st.builds(pb.DeleteCollectionRequest, collection_id=new_ids),
    "AddEmbeddings": st.one_of(
        st.builds(pb.AddEmbeddingsRequest, collection_id=new_ids, faces=_repeated(new_faces, [10_001]),
                  skip_existing=st.booleans()),
        st.builds(pb.AddEmbeddingsRequest, collection_id=new_ids, packed=packed_faces(),
                  faces=st.one_of(st.just([]), _repeated(new_faces, [1])), skip_existing=st.booleans())),
    "SearchByEmbedding": st.builds(pb.SearchByEmbeddingRequest, collection_id=any_ids,
                                   queries=_repeated(embeddings(), [1024, 1025]), k=u32, nprobe=u32,
                                   min_similarity=optional_float, target_fpir=fpirs, target_recall=recall_targets,
                                   ids_only=st.booleans(), **_why),
    "ListFaces": st.builds(pb.ListFacesRequest, collection_id=any_ids, max_results=u32, next_token=page_tokens,
                           include_embeddings=st.booleans()),
    "GetFaces": st.builds(pb.GetFacesRequest, collection_id=any_ids, face_ids=face_ids,
                          include_embeddings=st.booleans()),
    "DeleteFaces": st.builds(pb.DeleteFacesRequest, collection_id=new_ids, face_ids=face_ids),
    "DetectFaces": st.builds(pb.DetectFacesRequest, image=images, max_faces=u32),
    "IndexFaces": st.builds(pb.IndexFacesRequest, collection_id=new_ids, image=images, external_image_id=texts,
                            max_faces=u32, quality_filter=enums, metadata=metadata),
    "SearchFacesByImage": st.builds(pb.SearchFacesByImageRequest, collection_id=any_ids, image=images, k=u32,
                                    min_similarity=optional_float, all_faces=st.booleans(), quality_filter=enums,
                                    target_fpir=fpirs, **_why),
    "SearchFaces": st.builds(pb.SearchFacesRequest, collection_id=any_ids,
                             face_id=st.one_of(st.sampled_from(["s0", "s7"]), texts), k=u32,
                             min_similarity=optional_float, target_fpir=fpirs, **_why),
    "CompareFaces": st.builds(pb.CompareFacesRequest, source_image=images, target_image=images,
                              min_similarity=optional_float, target_fpir=fpirs, **_why),
    "BuildIndex": st.builds(pb.BuildIndexRequest, collection_id=new_ids),
    "SetCalibration": st.builds(pb.SetCalibrationRequest, collection_id=new_ids,
                                impostor_pairs=st.one_of(st.sampled_from([0, 9, 10, 11, 20_000]), u64),
                                impostor_tail=st.lists(floats32, max_size=12),
                                impostor_quantiles=st.one_of(st.lists(floats32, max_size=12),
                                                             st.just([0.0] * 1001))),
    "QueryAuditLog": st.builds(pb.QueryAuditLogRequest, since=timestamps, until=timestamps, identity=texts,
                               collection_id=any_ids, case_id=texts, max_results=u32),
}
assert set(MESSAGES) == set(RPCS), sorted(set(RPCS) ^ set(MESSAGES))

# Who calls: mostly an admin, so that requests reach the servicers' validation.
CALLERS = ("admin",) * 6 + ("enroller", "searcher", "auditor", "narrow", "revoked", "forged", "not-bearer", "none")
forged_tokens = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80)


@dataclass(frozen=True)
class Call:
    """One request: the method's path, its body (serialized or raw bytes) and the caller's metadata."""

    method: str
    body: bytes
    metadata: tuple[tuple[str, str], ...]
    shown: str  # what a failure report prints

    def __repr__(self) -> str:
        return f"Call({self.method}, {self.shown[:2000]}, metadata={self.metadata})"


@st.composite
def calls(draw, tokens: dict[str, str]) -> Call:
    """Any request to any gallery.v1 method (and some that are not), by any caller."""
    caller = draw(st.sampled_from(CALLERS))
    if caller in tokens:
        metadata = (("authorization", f"Bearer {tokens[caller]}"),)
    elif caller == "forged":
        metadata = (("authorization", f"Bearer {draw(forged_tokens)}"),)
    elif caller == "not-bearer":
        metadata = (("authorization", tokens["admin"]),)
    else:
        metadata = ()
    kind = draw(st.sampled_from(["message"] * 8 + ["bytes", "unknown-method"]))
    if kind == "unknown-method":
        name = draw(st.one_of(st.sampled_from(["Nope", "", "createcollection", "CreateCollection/"]), texts))
        name = name.encode("ascii", "replace").decode().replace("\n", "").replace("\r", "")
        body = draw(st.binary(max_size=64))
        return Call(GALLERY_PREFIX + name, body, metadata, repr(body))
    name = draw(st.sampled_from(RPCS))
    if kind == "bytes":
        body = draw(st.binary(max_size=512))
        return Call(GALLERY_PREFIX + name, body, metadata, repr(body))
    message = draw(MESSAGES[name])
    return Call(GALLERY_PREFIX + name, message.SerializeToString(), metadata, f"{type(message).__name__}"
                                                                           f"({str(message)[:2000]!r})")


# ---- the target ------------------------------------------------------------------------------------------

@dataclass
class Target:
    """A served gallery with its tokens by caller kind; `send` answers the status code of one call."""

    gallery: Gallery
    channel: grpc.Channel
    tokens: dict[str, str]
    codes: Counter = field(default_factory=Counter)

    def send(self, call: Call, timeout_s: float = 60.0) -> grpc.StatusCode:
        try:
            self.channel.unary_unary(call.method)(call.body, metadata=call.metadata, timeout=timeout_s)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        self.codes[code.name] += 1
        return code

    def admin(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens['admin']}"),)


@contextlib.contextmanager
def fuzz_target(store_uri: str, s3_endpoint: str) -> Iterator[Target]:
    """A server on 127.0.0.1 over 2 shard workers and 1 face worker (Ray actors of the running Ray), with the
    TrustInterceptor, tokens of every role, and the seeded collections; S3 images come from `s3_endpoint`,
    whose credentials are in the environment."""
    import boto3

    name = f"fuzz-{uuid.uuid4().hex[:8]}"
    face_workers = runtime.start_face_workers(1, num_cpus=1, num_gpus=0, cluster_name=name)
    shards = RayShards.start(2, store_uri, cluster_name=name, num_cpus=0.5)
    gallery = audit = None
    try:
        gallery = Gallery(ObjectStore(store_uri), shards, model=ray.get(face_workers[0].ready.remote()))
        s3 = boto3.client("s3", endpoint_url=s3_endpoint)
        s3.create_bucket(Bucket=BUCKET)
        for key, body in [("face.jpg", FACE_PHOTO.read_bytes()), ("junk", b"not an image"),
                          ("big", VALID_IMAGES[1] + bytes(MAX_S3_IMAGE_BYTES))]:
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        service = FaceService(gallery, face_workers, s3=S3ImageReader(s3_endpoint, max_bytes=MAX_S3_IMAGE_BYTES),
                              max_image_bytes=MAX_IMAGE_BYTES)
        registry = TokenRegistry(gallery.store)
        tokens = {role: registry.create(role, role) for role in ("admin", "enroller", "searcher", "auditor")}
        tokens["narrow"] = registry.create("narrow", "admin", ["scratch"])
        tokens["revoked"] = registry.create("revoked", "admin")
        registry.revoke("revoked")
        audit = AuditLog(gallery.store)
        with running_server(gallery, servicer=FaceGalleryServicer(gallery, service, gallery.store),
                            interceptors=[TrustInterceptor(audit, registry)]) as (_, port), \
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            target = Target(gallery, channel, tokens)
            _seed(target)
            yield target
    finally:
        if audit is not None:
            audit.close()
        if gallery is not None:
            gallery.close()
        shards.stop()
        runtime.stop_face_workers(face_workers)


def _seed(target: Target) -> None:
    rpc = target.channel.unary_unary
    for request in [pb.CreateCollectionRequest(collection_id="seeded", dimension=D),
                    pb.AddEmbeddingsRequest(collection_id="seeded", faces=[
                        pb.NewFace(face_id=f"s{i}", metadata={"person_id": f"p{i}"}, embedding=convert.embedding(x))
                        for i, x in enumerate(clustered_embeddings(40, D, seed=12))]),
                    pb.CreateCollectionRequest(collection_id="faces")]:
        method = f"{GALLERY_PREFIX}{type(request).__name__.removesuffix('Request')}"
        rpc(method, request_serializer=type(request).SerializeToString)(request, metadata=target.admin())
    target.gallery.wait_for_maintenance("seeded", timeout_s=60)


# ---- what must hold ----------------------------------------------------------------------------------------

PROBES = clustered_embeddings(5, D, seed=99)


def snapshot(target: Target) -> dict:
    """What the fuzzer must not change: the seeded collections' descriptions, faces and search results, and
    the store's keys outside audit/ (the log grows with every call)."""
    def call(name, request, response_type):
        return target.channel.unary_unary(GALLERY_PREFIX + name, request_serializer=type(request).SerializeToString,
                                          response_deserializer=response_type.FromString)(
            request, metadata=target.admin(), timeout=60)

    state = {"keys": [k for k in target.gallery.store.list("") if not k.startswith("audit/")]}
    for cid in SEEDED:
        d = call("DescribeCollection", pb.DescribeCollectionRequest(collection_id=cid), pb.CollectionDescription)
        state[cid] = (d.face_count, d.dimension, d.embedding_model, d.index_state, d.created_at.ToNanoseconds())
    faces = call("ListFaces", pb.ListFacesRequest(collection_id="seeded", include_embeddings=True),
                 pb.ListFacesResponse).faces
    state["faces"] = sorted((f.face_id, dict(f.metadata), f.embedding.values) for f in faces)
    search = call("SearchByEmbedding", pb.SearchByEmbeddingRequest(
        collection_id="seeded", queries=[convert.embedding(x) for x in PROBES], k=10, purpose="fuzz check",
        case_id="fuzz"), pb.SearchByEmbeddingResponse)
    state["search"] = [[(c.face.face_id, round(c.similarity, 5)) for c in r.candidates] for r in search.results]
    return state


def delete_unseeded(target: Target) -> int:
    """Deletes every collection the fuzzer created; returns how many."""
    rpc = target.channel.unary_unary
    listed = rpc(GALLERY_PREFIX + "ListCollections", request_serializer=pb.ListCollectionsRequest.SerializeToString,
                 response_deserializer=pb.ListCollectionsResponse.FromString)
    delete = rpc(GALLERY_PREFIX + "DeleteCollection", request_serializer=pb.DeleteCollectionRequest.SerializeToString)
    created = []
    token = ""
    while True:
        page = listed(pb.ListCollectionsRequest(max_results=1000, next_token=token), metadata=target.admin())
        created += [c.collection_id for c in page.collections if c.collection_id not in SEEDED]
        token = page.next_token
        if not token:
            break
    for cid in created:
        delete(pb.DeleteCollectionRequest(collection_id=cid), metadata=target.admin(), timeout=60)
    return len(created)


def serving(target: Target) -> bool:
    health = health_pb2_grpc.HealthStub(target.channel)
    return all(health.Check(health_pb2.HealthCheckRequest(service=s), timeout=10).status
               == health_pb2.HealthCheckResponse.SERVING for s in ("", "gallery.v1.Gallery"))


def campaign(target: Target, requests: int, *, check: bool, failures: list[Call] | None = None) -> None:
    """Sends `requests` generated calls. `check` (CI): the same calls on every run, and fail on a code in
    NEVER (Hypothesis then shrinks to the smallest such call); otherwise new calls on each run, every code
    counted and the offending calls kept in `failures`."""
    @settings(max_examples=requests, deadline=None, database=None, derandomize=check,
              phases=[Phase.generate, Phase.shrink] if check else [Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(call=calls(target.tokens))
    def one(call: Call) -> None:
        code = target.send(call)
        if code in NEVER:
            if failures is not None:
                failures.append(call)
            assert not check, f"{call!r} answered {code.name}"

    one()
