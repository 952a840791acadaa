"""`gallery serve` given a store it cannot use ends with one line and status 1, before it starts Ray."""

import os
import subprocess
import sys

import pytest
from support import free_port


def _serve(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.serve.cli", "serve", "--port", str(free_port()),
                           "--face-workers", "0", *flags],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": ""})


@pytest.mark.parametrize("where, message", [
    ("store", "is a file; give a folder"),
    ("store/below", "cannot create the folder"),
])
def test_a_store_that_is_a_file_is_refused(tmp_path, where, message):
    (tmp_path / "store").write_text("not a folder")
    served = _serve("--store", str(tmp_path / where))
    assert served.returncode == 1
    assert served.stderr.startswith(f"gallery serve: store '{tmp_path / where}': ") and message in served.stderr
    assert "Traceback" not in served.stderr and "Ray" not in served.stdout + served.stderr


def test_an_audit_store_that_is_a_file_is_refused_before_the_lease_is_taken(tmp_path):
    (tmp_path / "audit").write_text("not a folder")
    served = _serve("--store", str(tmp_path / "store"), "--audit-store", str(tmp_path / "audit"))
    assert served.returncode == 1
    assert f"{tmp_path / 'audit'} is a file" in served.stderr and "Traceback" not in served.stderr
    assert list((tmp_path / "store").iterdir()) == []  # no writer lease (.gateway.lock) was taken


def test_a_store_of_another_scheme_is_refused(tmp_path):
    served = _serve("--store", "ftp://example.org/gallery")
    assert served.returncode == 1
    assert "scheme 'ftp' unsupported" in served.stderr and "Traceback" not in served.stderr
