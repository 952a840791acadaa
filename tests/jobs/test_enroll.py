"""Bulk enrollment end to end: real photos and broken rows on a real S3 server, a real gateway, local Ray.

- enroll a manifest from S3, check faces, the chunks' output and errors; run it again (nothing twice);
- kill a running job and run it again (nothing lost, committed chunks not redone);
- `ray job submit` against a `ray start --head` of its own.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import enroll_data as data
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from support import S3_CREDENTIALS, free_port, wait_until

from cluster.faces import FaceNetEmbedder
from cluster.serve.server import running_server
from jobs.enroll import enroll
from jobs.storage import filesystem

ROOT = Path(__file__).resolve().parents[2]
ALL_FACES = 4096
# Raw 512-d collections of FaceNet embeddings: the gateway here runs no face model, so the job names its own.
FACENET = FaceNetEmbedder.name


@pytest.fixture
def gateway(gallery):
    """host:port of a gallery.v1 gateway over the test's gallery."""
    with running_server(gallery, "127.0.0.1:0") as (_, port):
        yield f"127.0.0.1:{port}"


def _s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        region_name=S3_CREDENTIALS["AWS_REGION"])


def _parquet(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def _read_folder(uri: str, endpoint: str = "") -> pa.Table:
    fs, path = filesystem(uri, endpoint)
    return pq.read_table(path, filesystem=fs)


def _upload_gallery(s3, bucket: str) -> None:
    """Photos and broken images under images/, and a manifest in two files under manifests/."""
    images = {name: data.photo(name) for name in ("obama.jpg", "obama2.jpg", "biden.jpg", data.GROUP, "gauss.webp",
                                                  "newton.png")}
    images.update({"small.jpg": data.small_face(), "sky.png": data.no_face(), "cut.jpg": data.truncated(),
                   "notes.jpg": data.NOT_AN_IMAGE})
    for name, body in images.items():
        s3.put_object(Bucket=bucket, Key=f"images/{name}", Body=body)

    def row(name: str, external_image_id: str, person_id: str | None = None) -> dict:
        return {"image_uri": f"s3://{bucket}/images/{name}", "external_image_id": external_image_id,
                "person_id": person_id, "site": "hq", "capture_year": 2009}

    first = [row("obama.jpg", "obama-1", "obama"), row("obama2.jpg", "obama-2", "obama"),
             row("biden.jpg", "biden-1", "biden"), row(data.GROUP, "group-1"), row("gauss.webp", "gauss-1", "gauss"),
             row("newton.png", "newton-1", "newton"),
             row("obama.jpg", "obama-1", "obama")]  # listed twice: enrolled once
    second = [row("missing.jpg", "missing-1"), row("notes.jpg", "notes-1"), row("cut.jpg", "cut-1"),
              row("sky.png", "sky-1"), row("small.jpg", "small-1"), row("biden.jpg", "")]
    s3.put_object(Bucket=bucket, Key="manifests/part-0.parquet", Body=_parquet(first))
    s3.put_object(Bucket=bucket, Key="manifests/part-1.parquet", Body=_parquet(second))


def test_enroll_from_s3_reports_errors_and_never_enrolls_twice(s3_server, s3_bucket, gallery, gateway):
    s3 = _s3(s3_server)
    _upload_gallery(s3, s3_bucket)
    job = dict(manifest=f"s3://{s3_bucket}/manifests/", collection="staff", output=f"s3://{s3_bucket}/enroll",
               gateway=gateway, s3_endpoint=s3_server, dimension=512, embedding_model=FACENET, rows_per_segment=4,
               images_per_batch=4,
               num_actors=2, progress_interval_s=1.0)

    summary = enroll(**job)

    assert summary.rows_read == 13 and summary.rows_processed == 13 and summary.rows_already_committed == 0
    # 5 portraits with one face each, 5 of the group's 6 faces (one near-profile is under AUTO), the repeated row's
    # face; under the quality filter: that near-profile and the 28 px face of small.jpg
    assert summary.faces_found == 11 and summary.faces_below_quality == 2
    assert (summary.faces_enrolled, summary.faces_already_enrolled) == (10, 1)
    assert summary.rows_failed == {"bad_row": 1, "invalid_image": 2, "low_quality": 1, "missing_object": 1,
                                   "no_face": 1}
    assert summary.chunks_committed == 4  # rows 0-3, 4-6 of part-0; 0-3, 4-5 of part-1
    assert summary.index.startswith("not built")  # 10 faces: exact search

    faces, _ = gallery.list_faces("staff", ALL_FACES, include_embeddings=True)
    assert len(faces) == 10 == gallery.describe("staff")[0].face_count
    by_image = {}
    for face in faces:
        by_image.setdefault(face.external_image_id, []).append(face)
        assert face.metadata["site"] == "hq" and face.metadata["capture_year"] == "2009"
        assert face.metadata["source_manifest"].startswith(f"s3://{s3_bucket}/manifests/part-0.parquet")
    assert {k: len(v) for k, v in by_image.items()} == {"obama-1": 1, "obama-2": 1, "biden-1": 1, "group-1": 5,
                                                       "gauss-1": 1, "newton-1": 1}
    obama, obama2 = by_image["obama-1"][0], by_image["obama-2"][0]
    assert obama.metadata["person_id"] == "obama" and obama.image_uri == f"s3://{s3_bucket}/images/obama.jpg"
    assert obama.metadata["source_row"] in ("0", "6")
    assert float(obama.embedding @ obama2.embedding) > 0.5  # the same person
    assert float(obama.embedding @ by_image["biden-1"][0].embedding) < 0.5

    segments = _read_folder(f"s3://{s3_bucket}/enroll/staff/segments/", s3_server)
    assert segments.num_rows == 11 and len(set(segments.column("face_id").to_pylist())) == 10
    assert segments.schema.field("embedding").type == pa.list_(pa.float32(), 512)
    assert {"box", "landmarks", "quality", "manifest", "manifest_row", "image_uri"} <= set(segments.column_names)
    xb = np.asarray(segments.column("embedding").combine_chunks().flatten()).reshape(-1, 512)
    assert np.allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-4)

    errors = _read_folder(f"s3://{s3_bucket}/enroll/staff/errors/", s3_server).to_pylist()
    reasons = {e["external_image_id"] or e["image_uri"]: e["reason"] for e in errors}
    assert reasons == {"missing-1": "missing_object", "notes-1": "invalid_image", "cut-1": "invalid_image",
                       "sky-1": "no_face", "small-1": "low_quality",
                       f"s3://{s3_bucket}/images/biden.jpg": "bad_row"}
    assert all(e["message"] and e["manifest"].endswith("part-1.parquet") for e in errors)

    again = enroll(**job)  # the same manifest: every chunk is committed
    assert (again.rows_already_committed, again.rows_processed, again.faces_enrolled) == (13, 0, 0)

    # Without the job state everything is redone, and the stable face ids keep it from enrolling anything twice.
    for key in [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="enroll/staff/state/")["Contents"]]:
        s3.delete_object(Bucket=s3_bucket, Key=key)
    redone = enroll(**job)
    assert (redone.rows_processed, redone.faces_enrolled, redone.faces_already_enrolled) == (13, 0, 11)
    assert gallery.describe("staff")[0].face_count == 10


def _portraits_manifest(tmp_path: Path, copies: int = 2) -> Path:
    """A local manifest with relative image paths: every portrait under `copies` external ids."""
    (tmp_path / "images").mkdir()
    for name in data.PORTRAITS:
        (tmp_path / "images" / name).write_bytes(data.photo(name))
    rows = [{"image_uri": f"../images/{name}", "external_image_id": f"{name}-{copy}"}
            for copy in range(copies) for name in data.PORTRAITS]
    (tmp_path / "manifest").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest" / "portraits.parquet")
    return tmp_path / "manifest"


def test_killed_job_resumes_without_losing_or_repeating_faces(tmp_path, gallery, gateway):
    manifest = _portraits_manifest(tmp_path)
    output = tmp_path / "out"
    flags = dict(manifest=str(manifest), collection="resume", output=str(output), gateway=gateway, dimension=512,
                 embedding_model=FACENET,
                 rows_per_segment=1, images_per_batch=1, num_actors=1, build_index_min_growth=0.0)
    command = [sys.executable, "-m", "jobs.enroll", "--ray-address", ray.get_runtime_context().gcs_address]
    for name, value in flags.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    log_path = tmp_path / "job.log"
    state = output / "resume" / "state"
    with open(log_path, "wb") as log:
        job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            def two_committed() -> bool:
                assert job.poll() is None, f"the job ended early:\n{log_path.read_text()[-3000:]}"
                return len(list(state.glob("*.json"))) >= 2

            wait_until(two_committed, 180, "two committed chunks")
        finally:
            job.kill()  # SIGKILL: no cleanup, as when a node is lost
            job.wait(30)
    committed = len(list(state.glob("*.json")))
    assert 2 <= committed < 12, "the job was not stopped half-way"
    assert gallery.describe("resume")[0].face_count >= committed

    summary = enroll(**flags)

    assert summary.rows_already_committed == committed and summary.rows_processed == 12 - committed
    # faces the killed run sent without recording the commit are found again, not enrolled twice
    assert summary.faces_enrolled + summary.faces_already_enrolled == 12 - committed
    faces, _ = gallery.list_faces("resume", ALL_FACES)
    assert sorted(f.external_image_id for f in faces) == sorted(f"{n}-{c}" for c in range(2) for n in data.PORTRAITS)
    segments = _read_folder(str(output / "resume" / "segments"))
    assert sorted(segments.column("face_id").to_pylist()) == sorted(f.face_id for f in faces)


@pytest.fixture
def ray_head(tmp_path):
    """A `ray start --head` cluster of its own (with the project's Python first on PATH); stopped by its pid."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # no 30 s drain on SIGTERM: nothing to hand over
    dashboard = free_port()
    ports = {"port": free_port(), "dashboard-port": dashboard, "ray-client-server-port": free_port(),
             "dashboard-agent-listen-port": free_port(), "metrics-export-port": free_port()}
    command = [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=3",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
    command += [f"--{name}={port}" for name, port in ports.items()]
    log_path = tmp_path / "ray-head.log"
    address = f"http://127.0.0.1:{dashboard}"
    with open(log_path, "wb") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def answers() -> bool:
        assert head.poll() is None, log_path.read_text()[-3000:]
        try:
            return urllib.request.urlopen(f"{address}/api/version", timeout=1).status == 200
        except OSError:
            return False

    try:
        wait_until(answers, 90, "ray head")
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()


def test_ray_job_submit(ray_head, s3_server, s3_bucket, gallery, gateway):
    address, env = ray_head
    s3 = _s3(s3_server)
    s3.put_object(Bucket=s3_bucket, Key="images/obama.jpg", Body=data.photo("obama.jpg"))
    rows = [{"image_uri": f"s3://{s3_bucket}/images/obama.jpg", "external_image_id": "obama-1"},
            {"image_uri": f"s3://{s3_bucket}/images/gone.jpg", "external_image_id": "gone-1"}]
    s3.put_object(Bucket=s3_bucket, Key="manifests/m.parquet", Body=_parquet(rows))
    entrypoint = ["python", "-m", "jobs.enroll", "--manifest", f"s3://{s3_bucket}/manifests/", "--collection", "jobs",
                  "--output", f"s3://{s3_bucket}/enroll/", "--gateway", gateway, "--s3-endpoint", s3_server,
                  "--dimension", "512", "--embedding-model", FACENET, "--num-actors", "1",
                  "--progress-interval-s", "1"]
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address,
              "--runtime-env-json", json.dumps({"env_vars": S3_CREDENTIALS}), "--", *entrypoint]

    result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300, check=False)

    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-4000:]
    assert "progress: 2/2 rows" in logs
    summary = json.loads(next(line for line in logs.splitlines() if line.startswith('{"collection"')))
    assert summary["faces_enrolled"] == 1 and summary["rows_failed"] == {"missing_object": 1}
    faces, _ = gallery.list_faces("jobs", ALL_FACES)
    assert [f.external_image_id for f in faces] == ["obama-1"]
