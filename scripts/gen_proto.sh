#!/usr/bin/env bash
# Regenerates the Python stubs of proto/gallery/v1/gallery.proto in place.
# tests/test_proto.py fails when the committed stubs are stale.
set -euo pipefail
cd "$(dirname "$0")/../proto"
python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. gallery/v1/gallery.proto
