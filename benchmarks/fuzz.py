"""Fuzz campaign: many hostile requests over every gallery.v1 RPC against a real server, longer than CI's.

The requests, the server and the checks are tests/test_fuzz.py's (tests/fuzz_requests.py): Hypothesis
generates well-formed messages with hostile and boundary values, raw bytes, unknown methods and every
kind of caller; the server runs on 127.0.0.1 over 2 shard workers and 1 face worker (local Ray), with the
TrustInterceptor, tokens and the audit log, and S3 images from a moto server. Prints the machine, each
call that answered INTERNAL or UNKNOWN, then one JSON line: `requests`, `codes` (count per status code),
`internal` and `unknown` (both must be 0), `healthy` and `data_changed` (the seeded collections' faces and
search results, and the store's keys outside audit/ once the collections the fuzzer made are deleted).

    python benchmarks/fuzz.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import hypothesis
import ray
from host import describe  # benchmarks/host.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzz_requests import campaign, delete_unseeded, fuzz_target, serving, snapshot  # noqa: E402
from support import S3_CREDENTIALS, free_port, stop_process, wait_until  # noqa: E402

from cluster.serve import runtime  # noqa: E402


def _moto(port: int, log) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)

    def answers() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=1).status == 200
        except OSError:
            return False

    wait_until(answers, 30, "moto S3 server")
    return process


def main(requests: int = 20_000) -> dict:
    machine = describe(ray=ray.__version__, hypothesis=hypothesis.__version__)
    print("machine:", json.dumps(machine), flush=True)
    os.environ.update(S3_CREDENTIALS)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        log = open(Path(tmp) / "moto.log", "wb")
        port = free_port()
        moto = _moto(port, log)
        runtime.start_ray("local", num_cpus=4)
        try:
            with fuzz_target(str(Path(tmp) / "store"), f"http://127.0.0.1:{port}") as target:
                before = snapshot(target)
                failures = []
                start = time.monotonic()
                campaign(target, requests, check=False, failures=failures)
                seconds = time.monotonic() - start
                for call in failures[:20]:
                    print("INTERNAL or UNKNOWN:", repr(call), flush=True)
                healthy = serving(target)
                created = delete_unseeded(target)
                data_changed = snapshot(target) != before
                codes = dict(target.codes.most_common())
        finally:
            ray.shutdown()
            stop_process(moto, grace_s=10)
            log.close()
    result = {"benchmark": "fuzz", "machine": machine, "requests": sum(codes.values()), "codes": codes,
              "internal": codes.get("INTERNAL", 0), "unknown": codes.get("UNKNOWN", 0), "healthy": healthy,
              "data_changed": data_changed, "collections_created": created, "seconds": round(seconds, 1),
              "requests_per_s": round(sum(codes.values()) / seconds, 1)}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="generated requests (default: %(default)s)")
    main(**vars(parser.parse_args()))
