"""The committed Python stubs are what grpc_tools generates from the .proto today."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_generated_stubs_are_fresh(tmp_path):
    shutil.copytree(ROOT / "proto" / "gallery", tmp_path / "gallery",
                    ignore=shutil.ignore_patterns("*_pb2*", "__pycache__"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(tmp_path), f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", "gallery/v1/gallery.proto"],
                   check=True)
    for name in ("gallery_pb2.py", "gallery_pb2.pyi", "gallery_pb2_grpc.py"):
        committed = (ROOT / "proto" / "gallery" / "v1" / name).read_text()
        assert (tmp_path / "gallery" / "v1" / name).read_text() == committed, \
            f"{name} is stale: run scripts/gen_proto.sh"
