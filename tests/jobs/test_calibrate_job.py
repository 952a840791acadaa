"""jobs/calibrate.py on a small labelled manifest of the real test photos and their degradations: the report, the
plot, the score table, and the calibration it stores with a face collection of a real server (in-process shards)."""

import json
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from PIL import Image

from cluster.api import convert
from cluster.faces import FaceDetector, decode_image
from cluster.faces.degrade import degrade
from cluster.faces.worker import FaceWorker
from cluster.gateway.gallery import Gallery
from cluster.index.calibration import Calibration
from cluster.serve.server import running_server
from cluster.shards.backend import LocalShards
from cluster.storage.object_store import ObjectStore
from jobs.calibrate import calibrate

DATA = Path(__file__).resolve().parents[1] / "data" / "faces"
PEOPLE = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden",
          "gauss.webp": "gauss", "newton.png": "newton"}
ERA = {"obama": "modern", "biden": "modern", "gauss": "portrait", "newton": "portrait"}
KINDS = ("jpeg15", "blur", "flip", "rot+15")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    """Each photo and four degraded copies of it, labelled by person and era."""
    folder = tmp_path_factory.mktemp("labelled")
    detector = FaceDetector()
    rows = {"image_uri": [], "person_id": [], "era": []}
    for name, person in PEOPLE.items():
        image = decode_image((DATA / name).read_bytes(), max_bytes=20 * 2**20)
        face = detector.detect(image, 1)[0]
        copies = {"": image, **{kind: degrade(image, face, kind) for kind in KINDS}}
        for kind, array in copies.items():
            path = folder / f"{Path(name).stem}-{kind or 'original'}.png"
            Image.fromarray(array).save(path)
            rows["image_uri"].append(path.name)  # relative to the manifest, as jobs resolve it
            rows["person_id"].append(person)
            rows["era"].append(ERA[person])
    rows["image_uri"].append("missing.jpg")
    rows["person_id"].append("nobody")
    rows["era"].append("modern")
    pq.write_table(pa.table(rows), folder / "faces.parquet")
    return str(folder / "faces.parquet")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(stub, address) of a gateway whose face model is the job's (FaceNet), with in-process shard workers."""
    store = str(tmp_path_factory.mktemp("store"))
    gallery = Gallery(ObjectStore(store), LocalShards(1, store), model=FaceWorker().model,
                      background_maintenance=False)
    try:
        with running_server(gallery, "127.0.0.1:0") as (_, port), \
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield gallery_pb2_grpc.GalleryStub(channel), f"127.0.0.1:{port}"
    finally:
        gallery.close()
        gallery.shards.stop()


def test_calibration_job_reports_stores_and_the_collection_uses_it(manifest, server, tmp_path):
    stub, address = server
    stub.CreateCollection(pb.CreateCollectionRequest(collection_id="staff"))
    before = stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="staff")).calibration
    assert before.source == pb.CALIBRATION_SOURCE_MODEL

    report = calibrate(manifest, str(tmp_path / "out"), collection="staff", gateway=address, group_columns="era")

    n_faces = len(PEOPLE) * (1 + len(KINDS))
    assert report.rows == n_faces + 1 and report.faces == n_faces and report.failed == {"missing_object": 1}
    assert report.identities == 4
    # 15 obama faces: 105 pairs; 5 of each other person: 10 pairs each.
    assert report.genuine_pairs == 105 + 3 * 10
    assert report.impostor_pairs == n_faces * (n_faces - 1) // 2 - report.genuine_pairs
    assert report.genuine_quantiles["50"] > report.impostor_quantiles["99"]
    curves = report.curves
    assert len(curves["threshold"]) == len(curves["fmr"]) == len(curves["fnmr"]) == 401
    assert np.all(np.diff(curves["fmr"]) <= 0) and np.all(np.diff(curves["fnmr"]) >= 0)
    ident = report.identification
    assert ident["gallery_size"] == 4 and ident["mated_searches"] == n_faces - 4
    assert ident["rank1_rate"] == 1.0  # every degraded copy finds its person first among four
    assert 0.0 <= ident["fnir"] <= 1.0 and 0.0 <= ident["fpir_measured"] <= 1.0
    era = report.groups["era"]
    assert set(era) == {"modern", "portrait"}
    assert era["modern"]["faces"] == 20 and era["portrait"]["faces"] == 10
    assert era["portrait"]["genuine_pairs"] == 20 and era["portrait"]["impostor_pairs"] == 25

    out = tmp_path / "out"
    assert json.loads((out / "report.json").read_text())["impostor_pairs"] == report.impostor_pairs
    with Image.open(out / "scores.png") as png:
        assert png.format == "PNG" and png.size == (900, 640)
    table = Calibration.from_table(out / "calibration.npz", source="job")
    assert table.n_pairs == report.impostor_pairs

    # The collection now uses the job's calibration: its source, its pairs, and its thresholds.
    after = stub.DescribeCollection(pb.DescribeCollectionRequest(collection_id="staff")).calibration
    assert after.source == pb.CALIBRATION_SOURCE_JOB and after.impostor_pairs == report.impostor_pairs
    probe = FaceWorker().analyze((DATA / "obama.jpg").read_bytes(), max_bytes=20 * 2**20).faces[0].embedding
    stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="staff", faces=[convert.new_face("o", probe)]))
    response = stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(
        collection_id="staff", queries=[convert.embedding(probe)], k=1, target_fpir=0.05, purpose="t", case_id="c"))
    assert response.calibration.source == pb.CALIBRATION_SOURCE_JOB
    assert response.threshold_used == pytest.approx(table.threshold_for_fpir(0.05, 1).similarity)


def test_calibration_job_refuses_bad_arguments(manifest, tmp_path):
    with pytest.raises(ValueError, match="target_fpir"):
        calibrate(manifest, str(tmp_path), target_fpir=1.0)
    with pytest.raises(ValueError, match="lacks column"):
        calibrate(manifest, str(tmp_path), group_columns="no_such_column")
