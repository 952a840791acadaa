"""Property-based fuzzing of every gallery.v1 RPC against a real server on 127.0.0.1 (tests/fuzz_requests.py):
whatever a caller sends, no INTERNAL or UNKNOWN, the server stays healthy and the seeded data is unchanged.
benchmarks/fuzz.py runs the same requests for longer."""

import grpc
import pytest
from fuzz_requests import MESSAGES, RPCS, SEEDED, campaign, delete_unseeded, fuzz_target, serving, snapshot
from support import S3_CREDENTIALS

REQUESTS = 1500  # 40-80 s on 2 shared cores, besides the server's start (about 15 s)


@pytest.fixture(scope="module")
def target(ray_session, s3_server, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        for key, value in S3_CREDENTIALS.items():
            env.setenv(key, value)
        with fuzz_target(str(tmp_path_factory.mktemp("fuzz-store")), s3_server) as target:
            yield target


def test_every_rpc_has_a_generator():
    assert set(MESSAGES) == set(RPCS) and len(RPCS) == 17


def test_hostile_requests_never_fail_internally_nor_change_data(target):
    before = snapshot(target)
    campaign(target, REQUESTS, check=True)
    assert sum(target.codes.values()) >= REQUESTS
    assert serving(target)
    # The requests went past authentication into the servicers, and met all the kinds of refusal.
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
            "UNIMPLEMENTED"} <= set(target.codes), target.codes
    delete_unseeded(target)  # what the fuzzer created itself, as admin; its objects must all go
    assert snapshot(target) == before, target.codes
    assert target.gallery.describe(SEEDED[0])[0].face_count == 40
    print(dict(target.codes))


def test_a_raw_body_that_does_not_parse_is_invalid_argument(target):
    call = target.channel.unary_unary("/gallery.v1.Gallery/ListFaces")
    with pytest.raises(grpc.RpcError) as raised:
        call(b"\xff\xff\xff", metadata=target.admin())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
