"""Authentication, authorization, accountability and the audit log, through a real gRPC server on 127.0.0.1."""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import wait_until

from cluster.api import convert
from cluster.index.synthetic import clustered_embeddings
from cluster.serve import audit as audit_log
from cluster.serve.audit import AuditLog, read_audit
from cluster.serve.authz import PERMISSIONS
from cluster.serve.interceptors import TrustInterceptor
from cluster.serve.server import running_server
from cluster.serve.servicer import GalleryServicer
from cluster.serve.tokens import REGISTRY_KEY, ROLES, TokenRegistry, ensure_admin_token, token_hash
from cluster.storage.object_store import ObjectStore

D = 8


def _bearer(token):
    return [("authorization", f"Bearer {token}")]


def _embedding(x):
    return convert.embedding(x)


@pytest.fixture
def secured(gallery, tmp_path):
    """(stub, tokens by role, audit log) of a server whose tokens cover collection "c" only (admin: all)."""
    registry = TokenRegistry(gallery.store)
    tokens = {role: registry.create(role, role, ["*"] if role == "admin" else ["c"]) for role in ROLES}
    audit = AuditLog(gallery.store)
    with running_server(gallery, interceptors=[TrustInterceptor(audit, registry)]) as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gallery_pb2_grpc.GalleryStub(channel)
            xb = clustered_embeddings(20, D, seed=51)
            for cid in ("c", "other"):
                stub.CreateCollection(pb.CreateCollectionRequest(collection_id=cid, dimension=D),
                                      metadata=_bearer(tokens["admin"]))
                stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id=cid, faces=[
                    pb.NewFace(face_id=f"f{i}", embedding=_embedding(x)) for i, x in enumerate(xb)]),
                    metadata=_bearer(tokens["admin"]))
            yield stub, channel, tokens, audit, xb
    audit.close()


def _code(call, request, metadata):
    try:
        call(request, metadata=metadata)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def test_the_registry_keeps_only_hashes_and_revokes(tmp_path):
    store = ObjectStore(str(tmp_path))
    registry = TokenRegistry(store)
    token = registry.create("door-3", "searcher", ["staff"])
    assert token not in store.get(REGISTRY_KEY).decode() and token_hash(token) in store.get(REGISTRY_KEY).decode()
    assert registry.authenticate(token).collections == ("staff",)
    with pytest.raises(ValueError, match="exists"):
        registry.create("door-3", "searcher")
    with pytest.raises(ValueError, match="role"):
        registry.create("x", "superuser")
    assert registry.revoke("door-3") and not registry.revoke("door-3")
    assert registry.authenticate(token) is None


def test_the_embedded_default_writes_its_admin_token_once_with_mode_0600(tmp_path):
    registry = TokenRegistry(ObjectStore(str(tmp_path / "store")))
    path = str(tmp_path / "store.admin-token")
    assert ensure_admin_token(registry, path) and not ensure_admin_token(registry, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert registry.authenticate(open(path).read().strip()).role == "admin"


def test_calls_need_a_known_token_but_health_does_not(secured):
    stub, channel, tokens, _, _ = secured
    request = pb.ListCollectionsRequest()
    for metadata in ((), _bearer("wrong"), [("authorization", tokens["admin"])]):
        assert _code(stub.ListCollections, request, metadata) == grpc.StatusCode.UNAUTHENTICATED
    listed = stub.ListCollections(request, metadata=_bearer(tokens["admin"])).collections
    assert [c.collection_id for c in listed] == ["c", "other"]
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def _requests(xb):
    """One request per gallery.v1 RPC, on collection "c"; searches state a purpose and a case."""
    why = dict(purpose="door 3 alarm", case_id="case-7")
    image = pb.Image(bytes=b"not an image")
    return {
        "CreateCollection": pb.CreateCollectionRequest(collection_id="c", dimension=D),
        "DescribeCollection": pb.DescribeCollectionRequest(collection_id="c"),
        "ListCollections": pb.ListCollectionsRequest(),
        "DeleteCollection": pb.DeleteCollectionRequest(collection_id="c"),
        "AddEmbeddings": pb.AddEmbeddingsRequest(collection_id="c", faces=[
            pb.NewFace(face_id="f1", embedding=_embedding(xb[1]))]),
        "SearchByEmbedding": pb.SearchByEmbeddingRequest(collection_id="c", k=2, queries=[_embedding(xb[1])], **why),
        "ListFaces": pb.ListFacesRequest(collection_id="c"),
        "GetFaces": pb.GetFacesRequest(collection_id="c", face_ids=["f1"]),
        "DeleteFaces": pb.DeleteFacesRequest(collection_id="c", face_ids=["absent"]),
        "DetectFaces": pb.DetectFacesRequest(image=image),
        "IndexFaces": pb.IndexFacesRequest(collection_id="c", image=image),
        "SearchFacesByImage": pb.SearchFacesByImageRequest(collection_id="c", image=image, **why),
        "SearchFaces": pb.SearchFacesRequest(collection_id="c", face_id="f1", **why),
        "CompareFaces": pb.CompareFacesRequest(source_image=image, target_image=image, **why),
        "BuildIndex": pb.BuildIndexRequest(collection_id="c"),
        "QueryAuditLog": pb.QueryAuditLogRequest(),
        "SetCalibration": pb.SetCalibrationRequest(collection_id="c", impostor_pairs=10,
                                                   impostor_tail=[0.5 - 0.01 * i for i in range(10)],
                                                   impostor_quantiles=[0.0] * 1001),
    }


def test_every_rpc_by_every_role(secured):
    """A role outside an RPC's list gets PERMISSION_DENIED; a role inside it gets past authorization."""
    stub, _, tokens, _, xb = secured
    requests = _requests(xb)
    assert set(requests) == set(PERMISSIONS) == set(pb.DESCRIPTOR.services_by_name["Gallery"].methods_by_name)
    for method, request in requests.items():
        if method == "DeleteCollection":
            continue  # below, last: it would delete the collection the others use
        for role in ROLES:
            code = _code(getattr(stub, method), request, _bearer(tokens[role]))
            allowed = role == "admin" or role in PERMISSIONS[method]
            assert (code != grpc.StatusCode.PERMISSION_DENIED) == allowed, (method, role, code)
            assert code != grpc.StatusCode.UNAUTHENTICATED
    for role in ("searcher", "enroller", "auditor"):
        assert _code(stub.DeleteCollection, requests["DeleteCollection"], _bearer(tokens[role])) == \
            grpc.StatusCode.PERMISSION_DENIED
    assert stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="c"),
                                   metadata=_bearer(tokens["admin"])).face_count == 20


def test_tokens_cover_their_collections_only(secured):
    stub, _, tokens, _, xb = secured
    searcher, enroller = _bearer(tokens["searcher"]), _bearer(tokens["enroller"])
    search = pb.SearchByEmbeddingRequest(collection_id="other", k=2, queries=[_embedding(xb[1])], purpose="p",
                                         case_id="c-1")
    assert _code(stub.SearchByEmbedding, search, searcher) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(stub.DeleteCollection, pb.DeleteCollectionRequest(collection_id="other"), enroller) == \
        grpc.StatusCode.PERMISSION_DENIED
    listed = stub.ListCollections(pb.ListCollectionsRequest(), metadata=searcher).collections
    assert [c.collection_id for c in listed] == ["c"]
    # A searcher reads face records, never their embeddings.
    assert _code(stub.GetFaces, pb.GetFacesRequest(collection_id="c", face_ids=["f1"], include_embeddings=True),
                 searcher) == grpc.StatusCode.PERMISSION_DENIED
    assert stub.GetFaces(pb.GetFacesRequest(collection_id="c", face_ids=["f1"]), metadata=searcher).faces[0] \
        .face_id == "f1"
    assert stub.GetFaces(pb.GetFacesRequest(collection_id="c", face_ids=["f1"], include_embeddings=True),
                         metadata=enroller).faces[0].embedding.dimension == D


def test_searches_must_state_purpose_and_case(secured):
    stub, _, tokens, _, xb = secured
    for purpose, case_id in (("", "case-7"), ("door 3", ""), ("  ", "case-7"), ("x" * 1001, "case-7")):
        request = pb.SearchByEmbeddingRequest(collection_id="c", k=1, queries=[_embedding(xb[1])], purpose=purpose,
                                              case_id=case_id)
        assert _code(stub.SearchByEmbedding, request, _bearer(tokens["searcher"])) == grpc.StatusCode.INVALID_ARGUMENT


def test_undecodable_bodies_are_invalid_argument_after_authentication_and_audited(secured, gallery):
    _, channel, tokens, _, _ = secured
    raw = channel.unary_unary("/gallery.v1.Gallery/SearchByEmbedding")  # sends bytes as they are
    for body in (b"\xff\xff\xff", b"\x0a\x02\xc3\x28", b"\x0b" * 200):  # garbage, invalid UTF-8, deep groups
        with pytest.raises(grpc.RpcError) as unauthenticated:
            raw(body)
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as raised:
            raw(body, metadata=_bearer(tokens["searcher"]))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, body
    records = [r for r in read_audit(gallery.store) if r["method"] == "SearchByEmbedding"]
    assert [(r["identity"], r["code"]) for r in records] == [("unauthenticated", "UNAUTHENTICATED"),
                                                             ("searcher", "INVALID_ARGUMENT")] * 3


def test_every_call_is_recorded_with_caller_purpose_probe_candidates_and_threshold(secured, gallery):
    stub, _, tokens, _, xb = secured
    before = len(read_audit(gallery.store))
    query = pb.SearchByEmbeddingRequest(collection_id="c", k=2, purpose="door 3 alarm", case_id="case-7",
                                        min_similarity=0.5, queries=[_embedding(xb[4])])
    calls = [(stub.SearchByEmbedding, query, tokens["searcher"]),
             (stub.SearchByEmbedding, query, "forged"),
             (stub.DescribeCollection, pb.DescribeCollectionRequest(collection_id="nope"), tokens["admin"]),
             (stub.AddEmbeddings, pb.AddEmbeddingsRequest(collection_id="c"), tokens["searcher"])]
    for call, request, token in calls:
        _code(call, request, _bearer(token))
    records = read_audit(gallery.store)[before:]
    assert [(r["method"], r["identity"], r["code"]) for r in records] == [
        ("SearchByEmbedding", "searcher", "OK"),
        ("SearchByEmbedding", "unauthenticated", "UNAUTHENTICATED"),
        ("DescribeCollection", "admin", "NOT_FOUND"),
        ("AddEmbeddings", "searcher", "PERMISSION_DENIED"),
    ]
    search = records[0]
    assert (search["purpose"], search["case_id"], search["collection_id"]) == ("door 3 alarm", "case-7", "c")
    assert search["probe_sha256"] == audit_log.fingerprint(convert.encode(xb[4]))
    assert search["candidates"][0][0][0] == "f4" and search["threshold"] == 0.5
    assert convert.encode(xb[4]).hex() not in json.dumps(records)  # the probe itself is never kept


def test_lean_searches_are_audited_with_the_candidates_shown(secured, gallery):
    """An ids_only search answers packed arrays, not Candidate messages: its audit record lists the same
    candidates (face id, similarity, gallery false-match probability) as a full search's."""
    stub, _, tokens, _, xb = secured
    before = len(read_audit(gallery.store))
    full = pb.SearchByEmbeddingRequest(collection_id="c", k=3, purpose="door 3 alarm", case_id="case-8",
                                       min_similarity=0.1, queries=[_embedding(xb[4]), _embedding(xb[5])])
    lean = pb.SearchByEmbeddingRequest()
    lean.CopyFrom(full)
    lean.ids_only = True
    answers = [stub.SearchByEmbedding(r, metadata=_bearer(tokens["searcher"])) for r in (full, lean)]
    assert not answers[1].results and list(answers[1].packed.face_ids) == [
        c.face.face_id for r in answers[0].results for c in r.candidates]
    full_record, lean_record = read_audit(gallery.store)[before:]
    assert lean_record["candidates"] == full_record["candidates"]
    # similarities to four decimals, probabilities to four significant digits, as the record keeps them
    assert all(s == round(s, 4) and p == float(f"{p:.4g}") for q in lean_record["candidates"] for _, s, p in q)
    assert [q[0][0] for q in lean_record["candidates"]] == ["f4", "f5"] and lean_record["threshold"] == 0.1


def test_a_record_encoded_once_is_the_canonical_json_with_its_hash():
    record = {"method": "SearchByEmbedding", "prev": "ab" * 32, "purpose": "door \u00e9 \"3\"\n",
              "candidates": [[("f1", 0.5, 1e-300), ("f2", 0.25, -1.0)], []], "z": {"b": 1, "a": [1.5, None]}}
    line, digest = audit_log._hashed_line(record)
    assert digest == audit_log.record_hash(record)
    assert line == audit_log._canonical({**record, "hash": digest})


def test_audit_queries_with_timestamps_that_do_not_convert_are_invalid_argument(secured, gallery):
    """Found by tests/test_fuzz.py: nanos outside [0, 1e9) or seconds past year 9999 answered INTERNAL; and
    QueryAuditLog on a server without an audit log answered INTERNAL, not its UNIMPLEMENTED."""
    stub, _, tokens, audit, _ = secured
    with pytest.raises(grpc.RpcError) as raised:
        stub.QueryAuditLog(pb.QueryAuditLogRequest(), metadata=_bearer(tokens["auditor"]))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, raised.value.details()
    registry = TokenRegistry(gallery.store)
    with running_server(gallery, servicer=GalleryServicer(gallery, gallery.store),
                        interceptors=[TrustInterceptor(audit, registry)]) as (_, port), \
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gallery_pb2_grpc.GalleryStub(channel)
        _check_timestamps(stub, tokens)


def _check_timestamps(stub, tokens):
    for since in (Timestamp(seconds=0, nanos=-1), Timestamp(seconds=2**62), Timestamp(seconds=-2**62),
                  Timestamp(nanos=10**9)):
        for request in (pb.QueryAuditLogRequest(since=since), pb.QueryAuditLogRequest(until=since)):
            with pytest.raises(grpc.RpcError) as raised:
                stub.QueryAuditLog(request, metadata=_bearer(tokens["auditor"]))
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert "not a valid timestamp" in raised.value.details()
    assert stub.QueryAuditLog(pb.QueryAuditLogRequest(since=Timestamp(seconds=0)),
                              metadata=_bearer(tokens["auditor"])).records


def test_a_call_that_cannot_be_recorded_is_not_answered(gallery, tmp_path):
    (tmp_path / "audit-store").mkdir()
    (tmp_path / "audit-store" / "audit").write_text("a file where the audit folder should be")
    registry = TokenRegistry(gallery.store)
    admin = registry.create("admin", "admin")
    gallery.create_collection("c", dimension=D)
    audit = AuditLog(ObjectStore(str(tmp_path / "audit-store")))
    with running_server(gallery, interceptors=[TrustInterceptor(audit, registry)]) as (_, port), \
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gallery_pb2_grpc.GalleryStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.DeleteCollection(pb.DeleteCollectionRequest(collection_id="c"), metadata=_bearer(admin))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "audit" in raised.value.details()
    audit.close()


def test_verify_finds_every_kind_of_tampering(tmp_path):
    store = ObjectStore(str(tmp_path))
    log = AuditLog(store, max_object_bytes=1)  # an object per write
    for start in range(0, 6, 2):  # three objects of two records each
        log.record_many([{"method": "SearchByEmbedding", "identity": f"caller-{i}"} for i in (start, start + 1)])
    log.close()
    assert audit_log.verify(store).intact and audit_log.verify(store).records == 6
    keys = [k for k in store.list("audit/") if k.endswith(".jsonl")]
    assert len(keys) == 3
    pristine = {k: store.get(k) for k in keys + [audit_log.HEAD_KEY]}

    def tampered(change) -> list[str]:
        for key, data in pristine.items():
            store.put(key, data)
        change()
        return audit_log.verify(store).problems

    assert tampered(lambda: store.put(keys[1], pristine[keys[1]].replace(b"caller-2", b"caller-9")))  # edited
    lines = pristine[keys[1]].splitlines()
    assert tampered(lambda: store.put(keys[1], b"\n".join(lines[:2]) + b"\n"))  # a record removed
    assert tampered(lambda: store.put(keys[1], b"\n".join([lines[0], lines[2], lines[1]]) + b"\n"))  # reordered
    assert tampered(lambda: store.put(keys[1], pristine[keys[1]][:-20]))  # a record cut short
    assert tampered(lambda: store.delete(keys[1]))  # an object removed
    assert tampered(lambda: store.delete(keys[-1]))  # the newest object removed (truncation)
    assert tampered(lambda: store.put(keys[0], pristine[keys[1]]))  # an object replaced by another
    assert tampered(lambda: None) == []


def test_the_chain_continues_across_gateways(tmp_path):
    store = ObjectStore(str(tmp_path))
    for gateway in range(3):
        log = AuditLog(store)
        log.record({"method": "ListCollections", "identity": f"g{gateway}"})
        log.close()
    result = audit_log.verify(store)
    assert result.intact and result.records == 3 and result.objects == 3
    assert [r["identity"] for r in read_audit(store)] == ["g0", "g1", "g2"]


def test_the_head_moves_at_most_once_an_interval_and_to_the_last_object_at_close(tmp_path):
    store = ObjectStore(str(tmp_path))
    log = AuditLog(store, head_interval_s=600, max_object_bytes=1)

    def head() -> int:
        return audit_log.Head.from_json(store.get(audit_log.HEAD_KEY)).sequence

    log.record({"method": "ListCollections", "identity": "first"})
    wait_until(lambda: store.exists(audit_log.HEAD_KEY), 10, "the first head")  # moved at once
    for n in range(5):
        log.record({"method": "ListCollections", "identity": f"call {n}"})
    assert head() == 1  # objects 2-6 came within the interval
    assert audit_log.verify(store).intact  # a head behind the chain
    log.close()
    assert head() == 6 and audit_log.verify(store).intact


def test_a_head_one_object_behind_the_chain_is_not_truncation(tmp_path):
    # The head moves after an object's calls are answered, so a crash may leave it naming the object before.
    store = ObjectStore(str(tmp_path))
    for gateway in range(2):
        log = AuditLog(store)
        log.record({"method": "ListCollections", "identity": f"g{gateway}"})
        log.close()
        if gateway == 0:
            head_after_first = store.get(audit_log.HEAD_KEY)
    store.put(audit_log.HEAD_KEY, head_after_first)
    result = audit_log.verify(store)
    assert result.intact and result.records == 2 and result.head.sequence == 2
    store.delete([k for k in store.list("audit/") if k.endswith(".jsonl")][-1])
    store.put(audit_log.HEAD_KEY, audit_log.Head(2, result.head.object_hash, result.head.record_hash).to_json())
    assert "truncated" in " ".join(audit_log.verify(store).problems)


def test_local_writes_append_to_one_object_until_it_is_full_and_the_head_may_name_any_record_of_it(tmp_path):
    store = ObjectStore(str(tmp_path))
    log = AuditLog(store, head_interval_s=600)
    log.record({"method": "ListCollections", "identity": "first"})
    wait_until(lambda: store.exists(audit_log.HEAD_KEY), 10, "the first head")
    for n in range(4):
        log.record({"method": "ListCollections", "identity": f"call {n}"})
    keys = [k for k in store.list("audit/") if k.endswith(".jsonl")]
    assert len(keys) == 1 and store.get(keys[0]).count(b"\n") == 6  # a header and five records, five appends
    result = audit_log.verify(store)  # the head names the object after its first record only
    assert result.intact and result.records == 5 and result.head.sequence == 1
    log.close()  # the head moves to the last record of the same object
    assert audit_log.Head.from_json(store.get(audit_log.HEAD_KEY)) == audit_log.verify(store).head
    pristine = store.get(keys[0])
    store.put(keys[0], pristine.replace(b"call 2", b"call 9"))
    assert "edited" in " ".join(audit_log.verify(store).problems)
    store.put(keys[0], pristine[:pristine.rfind(b"\n", 0, -1) + 1])  # the last record removed
    assert "not as the head names it" in " ".join(audit_log.verify(store).problems)
    store.put(keys[0], pristine)

    # A new gateway starts an object; full after two writes (a header and a record are less than two records)
    log = AuditLog(store, max_object_bytes=2 * len(pristine.splitlines()[1]))
    for n in range(3):
        log.record({"method": "ListCollections", "identity": f"second gateway {n}"})
    log.close()
    keys = [k for k in store.list("audit/") if k.endswith(".jsonl")]
    assert [store.get(k).count(b"\n") for k in keys] == [6, 3, 2]
    result = audit_log.verify(store)
    assert result.intact and result.records == 8 and result.head.sequence == 3


def test_an_append_a_crash_cut_short_is_invisible_to_readers_and_removed_by_the_next_gateway(tmp_path):
    store = ObjectStore(str(tmp_path))
    log = AuditLog(store)
    for n in range(3):
        log.record({"method": "ListCollections", "identity": f"call {n}"})
    log.close()
    (key,) = [k for k in store.list("audit/") if k.endswith(".jsonl")]
    store.append(key, b'{"method":"ListCollections","identity":"never answ')  # the crash: half an append
    assert [r["identity"] for r in read_audit(store)] == ["call 0", "call 1", "call 2"]
    assert audit_log.verify(store).intact

    log = AuditLog(store)  # the next gateway cuts the partial record, then continues the chain after it
    log.record({"method": "ListCollections", "identity": "after the crash"})
    log.close()
    assert store.get(key).endswith(b"}\n")
    assert [r["identity"] for r in read_audit(store)] == ["call 0", "call 1", "call 2", "after the crash"]
    result = audit_log.verify(store)
    assert result.intact and result.objects == 2


def test_a_head_kept_elsewhere_proves_its_records_after_the_log_has_grown_past_it(tmp_path):
    store = ObjectStore(str(tmp_path))
    log = AuditLog(store, max_object_bytes=1)  # an object per write
    for n in range(2):
        log.record({"method": "SearchByEmbedding", "identity": "alice", "case_id": f"case-{n}"})
    kept = audit_log.verify(store).head  # printed by an auditor after object 2, kept outside the store
    log.record({"method": "SearchByEmbedding", "identity": "alice", "case_id": "case-2"})
    log.close()
    log = AuditLog(store)  # a later gateway appends to object 4
    for n in range(3, 5):
        log.record({"method": "SearchByEmbedding", "identity": "alice", "case_id": f"case-{n}"})
    log.close()
    assert audit_log.verify(store, expected_head=kept).intact
    assert audit_log.verify(store, expected_head=audit_log.verify(store).head).intact

    # Someone with write access rewrites the whole chain, its head included, consistently: case-1 never happened.
    for key in store.list("audit/"):
        store.delete(key)
    log = AuditLog(store, max_object_bytes=1)
    for n in (0, 2, 3, 4):
        log.record({"method": "SearchByEmbedding", "identity": "alice", "case_id": f"case-{n}"})
    log.close()
    assert audit_log.verify(store).intact  # the chain alone cannot tell
    problems = audit_log.verify(store, expected_head=kept).problems
    assert problems == ["object 2 is not as the head names it (replaced, edited or cut short)"]


def test_concurrent_calls_share_writes_and_the_chain_keeps_each_callers_order(tmp_path):
    store = ObjectStore(str(tmp_path))
    append = store.append

    def slow_append(key, data):  # a slow disk: calls arriving during a write queue for the next one
        time.sleep(0.005)
        append(key, data)

    store.append = slow_append
    writes = []
    log = AuditLog(store, max_object_bytes=8_000, write_observer=lambda _, records: writes.append(records))

    def caller(name: str) -> None:
        for n in range(20):
            log.record({"method": "ListCollections", "identity": name, "call": n})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(caller, [f"caller-{i}" for i in range(16)]))
    log.close()
    result = audit_log.verify(store)
    assert result.intact and result.records == 320 and result.objects > 1  # objects rolled over at 8 KB
    assert sum(writes) == 320 and len(writes) < 320 and max(writes) > 1  # group commit
    records = read_audit(store)
    for i in range(16):
        assert [r["call"] for r in records if r["identity"] == f"caller-{i}"] == list(range(20))
