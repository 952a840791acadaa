"""A sample enrollment manifest: the photos in tests/data/faces/, as the Parquet file `jobs.enroll` reads.

    python -m jobs.sample_manifest --output ./sample-manifest/faces.parquet
    python -m jobs.enroll --manifest ./sample-manifest/ --collection sample --output ./enroll-out

One row per image: `image_uri` (its absolute path, so the manifest can be written anywhere),
`external_image_id` (the file name), `person_id` where tests/data/faces/README.md says who is in
the photo (the three Obama photos share one; the group photos have none), and `source`, an extra
column that the faces carry as metadata.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.api import flags

logger = logging.getLogger(__name__)
IMAGES = Path(__file__).resolve().parents[1] / "tests" / "data" / "faces"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Who is in the single-portrait photos (tests/data/faces/README.md).
PEOPLE = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden",
          "gauss.webp": "gauss", "newton.png": "newton"}


def sample_manifest(output: str = "./sample-manifest/faces.parquet", images: str = str(IMAGES)) -> int:
    """Writes a manifest of every image in a folder; returns its number of rows.

    Args:
        output: the Parquet file to write; its folder is created.
        images: the folder of images (.jpg, .jpeg, .png, .webp), listed in name order.

    Raises:
        FileNotFoundError: `images` is not a folder, or holds no image.

    Example:
        >>> sample_manifest("/tmp/sample-manifest/faces.parquet")
        8
    """
    folder = Path(images).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"images {images!r}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"images {images!r}: no {', '.join(IMAGE_SUFFIXES)} files in it")
    table = pa.table({
        "image_uri": [str(p) for p in files],
        "external_image_id": [p.name for p in files],
        "person_id": pa.array([PEOPLE.get(p.name) for p in files], pa.string()),
        "source": ["gallery-search sample"] * len(files),
    })
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    pq.write_table(table, output)
    logger.info("%d images of %s listed in %s", table.num_rows, folder, output)
    return table.num_rows


def main(argv: list[str] | None = None) -> int:
    rows = flags.run(sample_manifest, argv, "python -m jobs.sample_manifest")
    print(json.dumps({"rows": rows}), flush=True)
    return rows


if __name__ == "__main__":
    main()
