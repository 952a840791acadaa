"""`gallery token …` and `gallery audit …` as an operator runs them, on a store folder."""

import json

import pytest

from cluster.serve import cli
from cluster.serve.audit import AuditLog
from cluster.serve.tokens import TokenRegistry
from cluster.storage.object_store import ObjectStore


def test_token_create_list_revoke(tmp_path, capsys):
    store = str(tmp_path / "store")
    cli.main(["token", "create", "--store", store, "--name", "door-3", "--role", "searcher",
              "--collections", "staff,visitors"])
    token = capsys.readouterr().out.strip()
    assert TokenRegistry(ObjectStore(store)).authenticate(token).collections == ("staff", "visitors")

    cli.main(["token", "list", "--store", store])
    [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (listed["name"], listed["role"], listed["collections"]) == ("door-3", "searcher", ["staff", "visitors"])
    assert token not in json.dumps(listed)  # only the start of its hash is shown

    with pytest.raises(SystemExit, match="role 'superuser'"):
        cli.main(["token", "create", "--store", store, "--name", "x", "--role", "superuser"])
    cli.main(["token", "revoke", "--store", store, "--name", "door-3"])
    assert TokenRegistry(ObjectStore(store)).authenticate(token) is None
    with pytest.raises(SystemExit, match="no token named 'door-3'"):
        cli.main(["token", "revoke", "--store", store, "--name", "door-3"])


def test_audit_verify_and_query(tmp_path, capsys):
    store = ObjectStore(str(tmp_path / "store"))
    log = AuditLog(store, max_object_bytes=1)  # an object per record
    for case in ("case-1", "case-2", "case-1"):
        log.record({"method": "SearchByEmbedding", "identity": "door-3", "case_id": case})
    log.close()

    cli.main(["audit", "verify", "--store", store.root])
    out = capsys.readouterr().out
    assert out.startswith("intact: 3 records in 3 objects; head ")
    head = out.split("head ", 1)[1].strip()

    cli.main(["audit", "query", "--store", store.root, "--case-id", "case-1"])
    assert [json.loads(line)["case_id"] for line in capsys.readouterr().out.splitlines()] == ["case-1", "case-1"]

    edited = sorted(k for k in store.list("audit/") if k.endswith(".jsonl"))[1]  # the case-2 record
    store.put(edited, store.get(edited).replace(b"case-2", b"case-9"))
    with pytest.raises(SystemExit) as broken:
        cli.main(["audit", "verify", "--store", store.root, "--expected-head", head])
    assert broken.value.code == 1
    assert "BROKEN" in capsys.readouterr().out
