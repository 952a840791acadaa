"""The sample manifest of jobs/README.md: a manifest the job reads, of every test photo, with who is in it."""

from pathlib import Path

import pyarrow as pa
import pytest

from jobs.image_manifests import plan_chunks, read_rows, read_tasks
from jobs.sample_manifest import IMAGES, main, sample_manifest


def test_the_sample_manifest_lists_every_test_photo_as_the_job_reads_it(tmp_path, capsys):
    output = tmp_path / "manifest" / "faces.parquet"
    assert main(["--output", str(output)]) == 8
    assert capsys.readouterr().out == '{"rows": 8}\n'

    chunks = plan_chunks(str(tmp_path / "manifest"), rows_per_chunk=256)
    rows = read_rows(pa.Table.from_pylist(read_tasks(chunks))).to_pylist()
    by_id = {r["external_image_id"]: r for r in rows}
    assert sorted(by_id) == sorted(p.name for p in IMAGES.iterdir() if p.suffix != ".md")
    assert all(Path(r["image_uri"]).is_file() for r in rows)
    assert {n for n, r in by_id.items() if r["person_id"] == "obama"} == {"obama.jpg", "obama2.jpg", "obama3.jpg"}
    assert by_id["t1.jpg"]["person_id"] == "" and by_id["biden.jpg"]["person_id"] == "biden"
    assert all(dict(r["metadata"]) == {"source": "gallery-search sample"} for r in rows)


def test_a_folder_without_images_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .jpg"):
        sample_manifest(str(tmp_path / "m.parquet"), images=str(tmp_path))
