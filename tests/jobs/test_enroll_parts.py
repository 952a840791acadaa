"""The plain parts of enrollment, without Ray: image manifests, fetching, embedding, chunks, commit messages, rules."""

from __future__ import annotations

import logging
import time

import boto3
import enroll_data as data
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gallery.v1 import gallery_pb2 as pb

from cluster.faces import Face, FaceNetEmbedder
from jobs.build_index import needs_index
from jobs.commit import new_faces
from jobs.embed import FaceEmbedder, face_id
from jobs.enroll import _check_model, default_num_actors
from jobs.fetch import fetch_images, read_image
from jobs.image_manifests import ROW_SCHEMA, plan_chunks, read_rows, read_tasks
from jobs.job_state import chunk_errors, chunk_faces
from jobs.progress import Progress


@pytest.fixture(scope="module")
def embedder():
    # FaceNet, named: these tests check 512-d FaceNet rows (a collection's model is fixed at its creation).
    return FaceEmbedder(quality_filter="AUTO", device="cpu", model=FaceNetEmbedder.name)


def _manifest(tmp_path, rows: list[dict], row_group_size: int = 1000):
    folder = tmp_path / "manifest"
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "m.parquet", row_group_size=row_group_size)
    return folder


def _rows(manifest, rows_per_chunk: int = 100) -> pa.Table:
    return read_rows(pa.Table.from_pylist(read_tasks(plan_chunks(str(manifest), rows_per_chunk))))


def test_chunks_follow_row_groups_and_rows_keep_their_origin(tmp_path):
    rows = [{"image_uri": f"img/{i}.jpg", "external_image_id": f"e{i}", "person_id": f"p{i % 2}",
             "year": 2000 + i, "note": None if i % 3 else "x"} for i in range(7)]
    manifest = _manifest(tmp_path, rows, row_group_size=3)

    chunks = plan_chunks(str(manifest), rows_per_chunk=2)

    assert [(c.row_group, c.start, c.stop) for c in chunks] == [(0, 0, 2), (0, 2, 3), (1, 3, 5), (1, 5, 6), (2, 6, 7)]
    assert len({c.key for c in chunks}) == 5 and chunks == plan_chunks(str(manifest), rows_per_chunk=2)
    out = read_rows(pa.Table.from_pylist(read_tasks(chunks[1:4])))
    assert out.schema == ROW_SCHEMA
    assert out.column("manifest_row").to_pylist() == [2, 3, 4, 5]
    assert out.column("image_uri")[0].as_py() == str(manifest / "img" / "2.jpg")  # relative to the manifest
    assert out.column("person_id").to_pylist() == ["p0", "p1", "p0", "p1"]
    assert [dict(m) for m in out.column("metadata").to_pylist()] == [
        {"year": "2002"}, {"year": "2003", "note": "x"}, {"year": "2004"}, {"year": "2005"}]
    assert out.column("chunk_rows").to_pylist() == [1, 2, 2, 1]


def test_manifest_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="external_image_id"):
        plan_chunks(str(_manifest(tmp_path, [{"image_uri": "a.jpg"}])), rows_per_chunk=10)
    with pytest.raises(ValueError, match="rows_per_chunk"):
        plan_chunks(str(tmp_path / "manifest"), rows_per_chunk=0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plan_chunks(str(tmp_path / "nowhere"), rows_per_chunk=10)


def test_fetch_gives_a_reason_per_row(tmp_path):
    (tmp_path / "a.jpg").write_bytes(data.photo("obama.jpg"))
    manifest = _manifest(tmp_path, [
        {"image_uri": str(tmp_path / "a.jpg"), "external_image_id": "ok"},
        {"image_uri": str(tmp_path / "gone.jpg"), "external_image_id": "gone"},
        {"image_uri": str(tmp_path / "a.jpg"), "external_image_id": ""},
        {"image_uri": str(tmp_path / "a.jpg"), "external_image_id": "x" * 256},
        {"image_uri": str(tmp_path), "external_image_id": "folder"}])

    out = fetch_images(_rows(manifest))

    assert out.column("reason").to_pylist() == ["", "missing_object", "bad_row", "bad_row", "unreadable"]
    assert out.column("image")[0].as_py() == data.photo("obama.jpg") and out.column("image")[1].as_py() == b""
    assert len(out.column("image_sha256")[0].as_py()) == 64
    assert read_image(str(tmp_path / "a.jpg"), max_bytes=1000)[1] == "too_large"


def test_fetch_reads_s3_objects_with_the_gateways_reader(s3_server, s3_bucket):
    s3 = boto3.client("s3", endpoint_url=s3_server)  # credentials: the environment the s3_bucket fixture sets
    s3.put_object(Bucket=s3_bucket, Key="a.jpg", Body=b"x" * 1000)

    def read(uri: str, max_bytes: int = 1000) -> tuple[str, str]:
        data, reason, message = read_image(uri, s3_endpoint=s3_server, max_bytes=max_bytes)
        assert (data == b"x" * 1000) == (reason == "")
        return reason, message

    assert read(f"s3://{s3_bucket}/a.jpg") == ("", "")
    assert read(f"s3://{s3_bucket}/a.jpg", max_bytes=999)[0] == "too_large"
    assert read(f"s3://{s3_bucket}/gone.jpg")[0] == "missing_object"
    reason, message = read("s3://no-such-bucket/a.jpg")
    assert reason == "missing_object" and "s3://no-such-bucket/a.jpg cannot be read: NoSuchBucket" in message
    assert read("s3://bucket-only")[0] == "unreadable"


def test_embedder_reasons_faces_and_stable_ids(tmp_path, embedder):
    images = {"group.jpg": data.photo(data.GROUP), "small.jpg": data.small_face(), "sky.png": data.no_face(),
              "cut.jpg": data.truncated(), "notes.jpg": data.NOT_AN_IMAGE, "obama.jpg": data.photo("obama.jpg")}
    for name, body in images.items():
        (tmp_path / name).write_bytes(body)
    rows = [{"image_uri": str(tmp_path / name), "external_image_id": name} for name in images]
    rows.append({"image_uri": str(tmp_path / "obama.jpg"), "external_image_id": "obama-again"})
    fetched = fetch_images(_rows(_manifest(tmp_path, rows)))

    out = embedder(fetched)

    assert out.column("reason").to_pylist() == ["", "low_quality", "no_face", "invalid_image", "invalid_image", "",
                                                 ""]
    assert out.column("faces_detected").to_pylist()[:3] == [6, 1, 0]
    assert out.column("faces_below_quality").to_pylist()[:2] == [1, 1]
    assert "truncated" in out.column("message")[3].as_py() and "not a JPEG" in out.column("message")[4].as_py()
    faces = chunk_faces(out)
    assert faces.num_rows == 5 + 1 + 1
    group = faces.filter(pa.compute.equal(faces.column("external_image_id"), "group.jpg"))
    assert group.column("face_index").to_pylist() == [0, 2, 3, 4, 5]  # index 1, the near-profile, is left out
    sha = fetched.column("image_sha256")[0].as_py()
    assert group.column("face_id").to_pylist() == [face_id("group.jpg", sha, j) for j in (0, 2, 3, 4, 5)]
    # same image: same ids, run after run; another external id: other ids, the same embedding
    assert embedder(fetched).column("faces").to_pylist()[0][0]["face_id"] == group.column("face_id")[0].as_py()
    obama = faces.slice(faces.num_rows - 2).to_pylist()
    assert obama[0]["face_id"] != obama[1]["face_id"]
    assert np.allclose(obama[0]["embedding"], obama[1]["embedding"])
    errors = chunk_errors(out)
    assert errors.column("reason").to_pylist() == ["low_quality", "no_face", "invalid_image", "invalid_image"]
    assert errors.column("external_image_id").to_pylist() == ["small.jpg", "sky.png", "cut.jpg", "notes.jpg"]


def test_faces_under_the_quality_filter_are_never_embedded(embedder):
    group = data.photo(data.GROUP)
    everything = embedder.worker.analyze_many([group], min_quality=0.0)[0].faces
    filtered = embedder.worker.analyze_many([group], min_quality=embedder.min_quality)[0].faces
    passing = [f.quality >= embedder.min_quality for f in everything]
    assert [isinstance(f, Face) for f in filtered] == passing and not all(passing)
    for all_embedded, kept in zip(everything, filtered):
        assert all_embedded.box == kept.box
        if isinstance(kept, Face):
            np.testing.assert_allclose(kept.embedding, all_embedded.embedding, atol=1e-5)


def test_new_faces_carry_detail_metadata_and_embedding(tmp_path, embedder):
    (tmp_path / "obama.jpg").write_bytes(data.photo("obama.jpg"))
    manifest = _manifest(tmp_path, [{"image_uri": str(tmp_path / "obama.jpg"), "external_image_id": "o1",
                                     "person_id": "obama", "site": "hq"}])
    faces = chunk_faces(embedder(fetch_images(_rows(manifest))))

    (face,) = new_faces(faces)

    assert face.face_id == faces.column("face_id")[0].as_py() and face.external_image_id == "o1"
    assert dict(face.metadata) == {"person_id": "obama", "site": "hq", "source_manifest": str(manifest / "m.parquet"),
                                   "source_row": "0"}
    box = face.detail.bounding_box
    assert 0 < box.left < 1 and 0 < box.top < 1 and 0 < box.width < 1 and 0 < box.height < 1
    assert [lm.type for lm in face.detail.landmarks] == [pb.Landmark.EYE_RIGHT, pb.Landmark.EYE_LEFT, pb.Landmark.NOSE,
                                                         pb.Landmark.MOUTH_RIGHT, pb.Landmark.MOUTH_LEFT]
    x = np.frombuffer(face.embedding.values, "<f4")
    assert face.embedding.dimension == 512 and abs(np.linalg.norm(x) - 1) < 1e-4


def test_rules():
    assert not needs_index(255, 0, 100, 2.0)  # too few for PQ's codebooks
    assert not needs_index(19_999, 0, 20_000, 2.0) and needs_index(20_000, 0, 20_000, 2.0)
    assert not needs_index(39_999, 20_000, 20_000, 2.0) and needs_index(40_000, 20_000, 20_000, 2.0)
    assert default_num_actors(num_gpus=4, num_cpus=64, actor_num_cpus=4) == 4
    assert default_num_actors(num_gpus=0, num_cpus=4, actor_num_cpus=1) == 3
    assert default_num_actors(num_gpus=0, num_cpus=1, actor_num_cpus=2) == 1
    assert default_num_actors(num_gpus=0, num_cpus=4, actor_num_cpus=1, machine_cpus=2) == 2


def test_a_collection_of_another_model_or_dimension_is_refused(tmp_path, embedder):
    (tmp_path / "obama.jpg").write_bytes(data.photo("obama.jpg"))
    rows = embedder(fetch_images(_rows(_manifest(tmp_path, [{"image_uri": str(tmp_path / "obama.jpg"),
                                                            "external_image_id": "o1"}]))))
    model = embedder.model.name
    _check_model(pb.CollectionDescription(collection_id="raw", dimension=512), rows)
    _check_model(pb.CollectionDescription(collection_id="faces", dimension=512, embedding_model=model), rows)
    with pytest.raises(ValueError, match="dimension 128"):
        _check_model(pb.CollectionDescription(collection_id="small", dimension=128), rows)
    with pytest.raises(ValueError, match="arcface"):
        _check_model(pb.CollectionDescription(collection_id="other", dimension=512, embedding_model="arcface"), rows)


def test_progress_lines_and_bar(caplog, capsys):
    caplog.set_level(logging.INFO, logger="jobs.progress")
    progress = Progress(100, bar=False, interval_s=0.01)
    time.sleep(0.02)
    progress.update(rows=25, faces=50, enrolled=40)
    line = caplog.records[-1].getMessage()
    assert line.startswith("progress: 25/100 rows (25%), 50 faces found, 40 enrolled,") and "faces/s, ETA 0:00:" in line
    bar = Progress(10, bar=True)  # in a terminal: a tqdm bar on stderr
    bar.update(rows=10, faces=3)
    bar.close()
    assert "10/10" in capsys.readouterr().err
    with pytest.raises(ValueError, match="interval_s"):
        Progress(1, interval_s=0)
