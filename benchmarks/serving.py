"""Serving benchmark: the cluster through gRPC against one in-process FAISS index, same data, same run.

Data: clustered, L2-normalised 512-d vectors (1M by default); probes are noisy
copies of gallery vectors, as a new photo of an enrolled person is. The cluster
is a real `gallery serve` (local Ray, shard actors, gRPC on 127.0.0.1) in a
subprocess, searched with the nprobe and re-rank depth it measured for
itself after training (recall@10 target 0.99, see DescribeCollection's
search_tuning), with full answers and with lean ones (ids_only: packed ids
and scores); the baseline, run after it, is faiss IVF{nlist},PQ{m} + fp16
re-ranking (`IndexRefine`) with the same nlist, m, nprobe and re-rank depth,
searched from this process. The targets of issue 16 (a peer vector database
on the same 2-vCPU box, 250k vectors: batch-1 p50 <= 1.5 ms, batch-256 >=
5,000 QPS at recall@10 >= 0.99, build <= 120 s) are checked at the end.

Prints QPS at batch 1 and 256 with concurrent clients, latency p50/p99 at
batch 1, recall@1/@10 against exact search, bytes per vector and build time,
then one JSON line. With each QPS figure it prints where the CPU went, per
query: the gateway process, the shard workers, this process (the clients, or
the in-process index) and the rest of the machine (Linux, from /proc). It also
measures gRPC alone: the same clients at batch 1 against a server that answers
every query with canned candidates and searches nothing, the least any gRPC
service costs per query on this machine. Where a sequential batch-1 search's
time goes is read from the gateway's own histograms (its Prometheus metrics):
received to answered, the fan-out to the shards, a worker's own search and the
audit log's durable write, against the client's time for the same queries; with
a canned server's round trip, they give the batch-1 latency no gateway could go
below on this machine.

    python benchmarks/serving.py            # 1M vectors: tens of minutes on 2 cores
    python benchmarks/serving.py --quick    # 50k vectors, under a minute
    python benchmarks/serving.py --gpu      # shards on the GPU, against faiss's GPU IVF-PQ in-process

Shard workers get the machine's CPUs less two (for the gateway and the
clients), evenly; the in-process index gets them all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent import futures

import faiss
import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gallery.v1 import gallery_pb2 as pb  # noqa: E402
from gallery.v1 import gallery_pb2_grpc  # noqa: E402
from host import describe  # noqa: E402  (benchmarks/host.py)
from servers import free_port, serving_address  # noqa: E402  (benchmarks/servers.py)

from cluster.client import GalleryClient  # noqa: E402
from cluster.index import tuning, vectors  # noqa: E402
from cluster.index.gpu import GpuCopy  # noqa: E402
from cluster.index.synthetic import clustered_embeddings, noisy_probes  # noqa: E402
from cluster.index.training import ivfpq_factory  # noqa: E402

K = 10
WHY = {"purpose": "benchmark", "case_id": "benchmarks/serving.py"}  # every search states both, and is audited


@contextlib.contextmanager
def timed(what: str, into: dict | None = None):
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    print(f"  {what}: {elapsed:.1f} s", flush=True)
    if into is not None:
        into[what] = elapsed


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads; 0 once it has ended."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parent(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def _machine_busy_cpu_s() -> float:
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, open("/proc/stat").readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def shard_worker_pids(ancestor: int | None = None) -> list[int]:
    """Processes of ShardWorker actors (Ray names them ray::…ShardWorker), descendants of `ancestor` when given:
    other sessions' Ray clusters on a shared machine have shard workers too."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and b"ShardWorker" in open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")[0]:
                pids.append(int(entry))
        except OSError:
            pass
    if ancestor is None:
        return pids

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == ancestor:
                return True
            pid = _parent(pid)
        return False

    return [pid for pid in pids if descends(pid)]


class CpuMeter:
    """CPU seconds that groups of processes, and the whole machine, spend while a measurement runs.

    Example:
        >>> with CpuMeter({"gateway": [gateway_pid], "shards": shard_worker_pids()}) as meter:
        ...     qps = throughput(...)
        >>> meter.per_query_ms(qps)  # {'gateway': 1.7, 'shards': 3.2, 'rest': 0.4}: rest, the machine less the groups
    """

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups
        self.available = os.path.exists("/proc/stat")

    def _sample(self) -> dict[str, float]:
        sample = {name: sum(_process_cpu_s(pid) for pid in pids) for name, pids in self.groups.items()}
        sample["machine"] = _machine_busy_cpu_s()
        return sample

    def __enter__(self) -> CpuMeter:
        if self.available:
            self._start, self._started = self._sample(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            end, self.elapsed_s = self._sample(), time.perf_counter() - self._started
            self.cpu_s = {name: end[name] - self._start[name] for name in end}

    def per_query_ms(self, qps: float) -> dict[str, float]:
        """CPU milliseconds per query by group, 'rest' for the other processes; empty without /proc."""
        if not self.available:
            return {}
        queries = qps * self.elapsed_s
        split = {name: v for name, v in self.cpu_s.items() if name != "machine"}
        split["rest"] = max(self.cpu_s["machine"] - sum(split.values()), 0.0)
        return {name: round(v / queries * 1e3, 3) for name, v in split.items()}

    def busy_cpus(self) -> float:
        return self.cpu_s["machine"] / self.elapsed_s if self.available else float("nan")


def measure_throughput(search, xq: np.ndarray, batch: int, clients: int, duration_s: float,
                       processes: dict[str, list[int]], label: str) -> tuple[float, dict[str, float]]:
    """`throughput` in steady state, and the CPU milliseconds per query of each group of processes; prints both.

    A short run of the same load goes first: a `gallery serve` just started (or just done building)
    spends a few more seconds of CPU settling (8 clients at batch 1, 1M vectors: 221 QPS in the
    first 6 s, then 310), which is not what it serves at.
    """
    throughput(search, xq, batch, clients, min(3.0, duration_s / 3))
    with CpuMeter(processes) as meter:
        qps = throughput(search, xq, batch, clients, duration_s)
    split = meter.per_query_ms(qps)
    where = ", ".join(f"{name} {ms:.2f}" for name, ms in split.items())
    print(f"  {label}: {qps:.0f} QPS; CPU ms per query: {where or 'n/a'} "
          f"(machine busy {meter.busy_cpus():.2f} of {os.cpu_count()} CPUs)", flush=True)
    return qps, split


def recall(found: list[list[int]], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def throughput(search, xq: np.ndarray, batch: int, clients: int, duration_s: float) -> float:
    """Queries per second with `clients` threads each sending `batch` queries per call."""
    count = [0] * clients
    stop = time.perf_counter() + duration_s

    def client(c: int) -> None:
        rng = np.random.default_rng(c)
        while time.perf_counter() < stop:
            rows = rng.integers(0, len(xq), size=batch)
            search(xq[rows])
            count[c] += batch

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / (time.perf_counter() - start)


def latencies_ms(search, xq: np.ndarray, n: int) -> np.ndarray:
    for x in xq[:20]:  # warm-up
        search(x[None])
    out = []
    for x in xq[:n]:
        start = time.perf_counter()
        search(x[None])
        out.append((time.perf_counter() - start) * 1e3)
    return np.array(out)


# The histograms of the gateway's metrics (cluster/serve/metrics.py) that time the stages of a search.
STAGES = {"gateway": "gallery_grpc_request_duration_seconds",  # received to answered
          "fan_out": "gallery_search_fan_out_duration_seconds",  # to the shards and back
          "shard_search": "gallery_shard_search_duration_seconds",  # a worker's own search
          "audit_write": "gallery_audit_write_duration_seconds"}  # the audit log's durable write
SEARCH_METHOD = "gallery.v1.Gallery/SearchByEmbedding"


def scrape_stages(url: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of each of `STAGES` so far, over all workers; the gateway's of searches only."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    totals = {stage: [0.0, 0.0] for stage in STAGES}
    by_name = {name: stage for stage, name in STAGES.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, _, part = sample.name.rpartition("_")
            if name not in by_name or part not in ("sum", "count"):
                continue
            if by_name[name] == "gateway" and sample.labels.get("method") != SEARCH_METHOD:
                continue
            totals[by_name[name]][part == "count"] += sample.value
    return {stage: (seconds, count) for stage, (seconds, count) in totals.items()}


def stage_means_ms(before: dict, after: dict) -> dict[str, float]:
    """Mean milliseconds of each stage between two `scrape_stages`; NaN for a stage that did not run."""
    means = {}
    for stage in STAGES:
        seconds, count = (a - b for a, b in zip(after[stage], before[stage]))
        means[stage] = seconds / count * 1e3 if count else float("nan")
    return means


class CannedSearch(gallery_pb2_grpc.GalleryServicer):
    """Answers SearchByEmbedding with k made-up candidates per query, searching nothing: gRPC's own cost."""

    def SearchByEmbedding(self, request, context):
        response = pb.SearchByEmbeddingResponse(gallery_size=1_000_000, index_state=pb.INDEX_STATE_IVF_PQ)
        for _ in request.queries:
            candidates = response.results.add().candidates
            for j in range(request.k):
                candidates.add(similarity=0.5, false_match_rate=1e-6,
                               gallery_false_match_probability=1e-3).face.face_id = str(j)
        return response


def serve_canned(bound) -> None:
    """Serves `CannedSearch` on a port the kernel picks, and sends the port on the pipe `bound`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    gallery_pb2_grpc.add_GalleryServicer_to_server(CannedSearch(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    bound.send(port)
    server.wait_for_termination()


def grpc_alone(xq: np.ndarray, clients: int, duration_s: float) -> tuple[float, dict[str, float], float]:
    """Batch-1 QPS and CPU per query of the benchmark's clients against `CannedSearch` in its own process, and the
    p50 of sequential round trips (ms)."""
    spawn = multiprocessing.get_context("spawn")
    receiving, sending = spawn.Pipe(duplex=False)
    server = spawn.Process(target=serve_canned, args=(sending,), daemon=True)
    server.start()
    try:
        if not receiving.poll(60):
            raise RuntimeError("the canned gRPC server did not start within 60 s")
        port = receiving.recv()
        with GalleryClient(f"127.0.0.1:{port}") as client:
            grpc.channel_ready_future(client.channel).result(timeout=60)

            def canned(x):
                return client.search("canned", x, K, **WHY)

            qps, cpu = measure_throughput(canned, xq, 1, clients, duration_s,
                                          {"server": [server.pid], "this process (clients)": [os.getpid()]}, "batch 1")
            round_trip_ms = float(np.percentile(latencies_ms(canned, xq, min(len(xq), 300)), 50))
            print(f"  batch 1, sequential: p50 {round_trip_ms:.2f} ms a round trip", flush=True)
            return qps, cpu, round_trip_ms
    finally:
        server.terminate()
        server.join()


def shard_cpus(num_shards: int) -> int:
    """CPUs per shard worker: the machine's less two for the gateway and the clients, at least one."""
    return max(1, ((os.cpu_count() or 1) - 2) // num_shards)


def in_process(stored: np.ndarray, xq: np.ndarray, truth: np.ndarray, *, nlist: int, pq_m: int, pq_bits: int,
               nprobe: int, rerank: int, clients: int, duration_s: float, use_gpu: bool) -> dict:
    """faiss IVF-PQ + fp16 re-ranking (`IndexRefine`) in this process, with the cluster's parameters: its figures."""
    num_vectors, dimension = stored.shape
    build: dict[str, float] = {}
    with timed("build", build):
        sample = stored[np.random.default_rng(0).choice(num_vectors, tuning.training_sample_size(num_vectors, nlist),
                                                        replace=False)]
        base = faiss.index_factory(dimension, ivfpq_factory(nlist, pq_m, pq_bits), faiss.METRIC_INNER_PRODUCT)
        base.cp.niter = tuning.COARSE_KMEANS_ITERATIONS
        if pq_bits == 8:
            base.do_polysemous_training = False
        local = faiss.IndexRefine(base, faiss.IndexScalarQuantizer(dimension, faiss.ScalarQuantizer.QT_fp16,
                                                                   faiss.METRIC_INNER_PRODUCT))
        local.train(sample)
        local.add(stored)
        gpu_base = None
        if use_gpu:
            gpu_base = GpuCopy(base)  # as shard workers copy their partitions
            local.base_index = gpu_base.index
            gpu_base.index.nprobe = nprobe
    params = faiss.IndexRefineSearchParameters(k_factor=rerank / K, base_index_params=None if use_gpu else
                                               faiss.SearchParametersIVF(nprobe=nprobe))
    gpu_lock = threading.Lock() if use_gpu else contextlib.nullcontext()  # GPU indexes take one thread at a time

    def local_search(x):
        with gpu_lock:
            return local.search(x, K, params=params)

    local_ids = local_search(xq)[1].tolist()
    this_process = {"this process": [os.getpid()]}
    qps_1, cpu_1 = measure_throughput(local_search, xq, 1, clients, duration_s, this_process, "batch 1")
    qps_256, cpu_256 = measure_throughput(local_search, xq, 256, 2, duration_s, this_process, "batch 256")
    return {
        "recall_at_1": recall(local_ids, truth, 1), "recall_at_10": recall(local_ids, truth, K),
        "qps_batch_1": qps_1, "qps_batch_256": qps_256, "cpu_1": cpu_1, "cpu_256": cpu_256,
        "latency_ms": latencies_ms(local_search, xq, min(len(xq), 300)),
        "bytes_per_vector": base.code_size + 8 + 2 * dimension, "build_s": build["build"],
    }


def cluster(xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, *, num_shards: int, cpus_per_shard: int, clients: int,
            duration_s: float, use_gpu: bool) -> dict:
    """A real `gallery serve` in a subprocess, fed over gRPC and searched with the parameters it measured for
    itself (`SearchTuning`), with full candidates and with lean (ids_only) answers: its figures."""
    num_vectors, dimension = xb.shape
    build: dict[str, float] = {}
    # The metrics port is chosen here (`--metrics-port 0` serves none); gallery serve refuses to start, saying
    # so, if it was taken meanwhile. Its gRPC port is one the kernel picks (benchmarks/servers.py).
    store, metrics_port = tempfile.mkdtemp(prefix="gallery-bench-"), free_port()
    log = open(os.path.join(store, "serve.log"), "wb")
    print(f"  gallery serve logs to {log.name}", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "cluster.serve.cli", "serve",
                               "--store", os.path.join(store, "data"), "--port", "0",
                               "--metrics-port", str(metrics_port), "--num-shards", str(num_shards),
                               "--train-threshold", str(num_vectors), "--face-workers", "0",
                               "--shard-num-cpus", str(cpus_per_shard), "--shard-num-gpus", str(-1 if use_gpu else 0)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""})
    token_path = os.path.join(store, "data.admin-token")  # written by gallery serve before it serves
    try:
        address = serving_address(server, log.name, 120)
        with open(token_path) as f:
            client = GalleryClient(address, token=f.read().strip(), timeout_s=600)
        with timed("build (ingest over gRPC + train + populate shards + measure recall)", build):
            with timed("of which ingest over gRPC"):
                client.create_collection("bench", dimension=dimension)
                for start in range(0, num_vectors, 10_000):
                    end = min(start + 10_000, num_vectors)
                    client.add("bench", [str(i) for i in range(start, end)], xb[start:end])
            with timed("of which train + populate shards + measure recall"):
                while True:
                    description = client.describe("bench")
                    if description.index_state == pb.INDEX_STATE_IVF_PQ and not description.training:
                        break
                    time.sleep(1)
        t = description.search_tuning
        print(f"  measured: recall@10 {t.recall_at_10:.4f} at nprobe {t.nprobe}, re-rank depth {t.rerank_depth} "
              f"(target {t.target_recall}, {t.sample_queries} held-out queries, {len(t.points)} settings); "
              f"{ivfpq_factory(description.nlist, description.pq_m, description.pq_bits)}", flush=True)
        figures = {"build_s": build["build (ingest over gRPC + train + populate shards + measure recall)"],
                   "nlist": description.nlist, "pq_m": description.pq_m, "pq_bits": description.pq_bits,
                   "nprobe": t.nprobe,
                   "rerank": t.rerank_depth or tuning.rerank_depth(K), "measured_recall_at_10": t.recall_at_10,
                   "bytes_per_vector": description.memory_bytes / num_vectors}
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        processes = {"gateway": [server.pid], "shards": shard_worker_pids(server.pid),
                     "this process (clients)": [os.getpid()]}
        for lean in (False, True):
            def cluster_search(x, lean=lean):
                return client.search("bench", x, K, ids_only=lean, **WHY)

            print(f"  {'lean (ids_only: packed ids and scores)' if lean else 'full candidates (face records)'}:")
            found = [[int(i) for i in row] for start in range(0, len(xq), 256)
                     for row in cluster_search(xq[start:start + 256])[1]]
            qps_1, cpu_1 = measure_throughput(cluster_search, xq, 1, clients, duration_s, processes, "batch 1")
            qps_256, cpu_256 = measure_throughput(cluster_search, xq, 256, 2, duration_s, processes, "batch 256")
            before = scrape_stages(metrics_url)
            latency = latencies_ms(cluster_search, xq, min(len(xq), 300))
            stages = stage_means_ms(before, scrape_stages(metrics_url))
            stages["client"] = float(latency.mean())  # the warm-up's queries are in the stages' means too
            print_latency_stages(stages)
            figures["lean" if lean else "full"] = {
                "recall_at_1": recall(found, truth, 1), "recall_at_10": recall(found, truth, K),
                "qps_batch_1": qps_1, "qps_batch_256": qps_256, "cpu_1": cpu_1, "cpu_256": cpu_256,
                "latency_ms": latency, "latency_stages_ms": stages,
            }
        client.close()
        return figures
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
        shutil.rmtree(os.path.join(store, "data"), ignore_errors=True)  # keep serve.log for a post-mortem


def print_latency_stages(stages: dict[str, float]) -> None:
    """Where a sequential batch-1 search's time goes, from the gateway's histograms (means per call)."""
    gateway = stages["gateway"]
    rest = gateway - stages["fan_out"] - stages["audit_write"]
    print(f"  batch 1, sequential, mean per query: {stages['client']:.2f} ms at the client; the gateway "
          f"{gateway:.2f} ms received to answered: the fan-out {stages['fan_out']:.2f} (a worker's own search "
          f"{stages['shard_search']:.2f}), the audit log's durable write {stages['audit_write']:.2f}, the rest "
          f"{rest:.2f}; gRPC and the client {stages['client'] - gateway:.2f}", flush=True)


def main(num_vectors: int = 1_000_000, dimension: int = 512, num_queries: int = 1000, num_shards: int = 2,
         clients: int = 8, duration_s: float = 10.0, quick: bool = False, use_gpu: bool = False) -> dict:
    """Runs the benchmark; returns the figures of the final JSON line."""
    if quick:
        num_vectors, num_queries, duration_s = 50_000, 300, 3.0
    machine = describe(faiss=faiss.__version__)
    print(f"machine: {machine}")
    cpus_per_shard = shard_cpus(num_shards)
    print(f"cluster: {num_shards} shards x {cpus_per_shard} CPUs{' + a GPU share each' if use_gpu else ''}; "
          f"in-process: {faiss.omp_get_max_threads()} threads{' + the GPU' if use_gpu else ''}")
    print(f"data: {num_vectors} x {dimension} clustered")
    with timed("generate data"):
        xb = clustered_embeddings(num_vectors, dimension, seed=0)
        xq, _ = noisy_probes(xb, num_queries, seed=1)
        stored = vectors.to_stored(vectors.normalize(xb)).astype(np.float32)  # what the cluster scores against
        xq = vectors.normalize(xq)
    with timed("exact ground truth"):
        flat = faiss.IndexFlatIP(dimension)
        flat.add(stored)
        _, truth = flat.search(xq, K)
        del flat

    # The cluster first: the in-process index then uses the nprobe and re-rank depth the cluster measured.
    print("cluster (gallery serve, gRPC on 127.0.0.1):")
    c = cluster(xb, xq, truth, num_shards=num_shards, cpus_per_shard=cpus_per_shard, clients=clients,
                duration_s=duration_s, use_gpu=use_gpu)
    nlist, pq_m, pq_bits, nprobe = c["nlist"], c["pq_m"], c["pq_bits"], c["nprobe"]
    # As many candidates re-ranked as the cluster's partitions re-rank in all (each its share and a margin).
    rerank = num_shards * tuning.partition_rerank_depth(c["rerank"], K, num_shards)
    del xb

    print("gRPC alone (a server that answers with canned candidates and searches nothing):")
    canned_qps, canned_cpu, canned_p50 = grpc_alone(xq, clients, duration_s)

    print(f"in-process FAISS ({ivfpq_factory(nlist, pq_m, pq_bits)}, nprobe {nprobe}, re-rank {rerank}: the "
          f"cluster's measured setting):")
    local = in_process(stored, xq, truth, nlist=nlist, pq_m=pq_m, pq_bits=pq_bits, nprobe=nprobe, rerank=rerank,
                       clients=clients, duration_s=duration_s, use_gpu=use_gpu)

    full, lean = c["full"], c["lean"]
    print(f"\n{'':26}{'in-process':>12}{'cluster':>12}{'lean':>12}")
    for name in ("qps_batch_1", "qps_batch_256", "recall_at_1", "recall_at_10"):
        print(f"{name:26}{local[name]:>12.3f}{full[name]:>12.3f}{lean[name]:>12.3f}")
    for q in (50, 99):
        print(f"{f'latency_p{q}_ms batch 1':26}" + "".join(f"{np.percentile(f['latency_ms'], q):>12.3f}"
                                                           for f in (local, full, lean)))
    for batch in ("1", "256"):
        print(f"{f'gateway CPU ms/q batch {batch}':26}{'':>12}" + "".join(
            f"{f[f'cpu_{batch}'].get('gateway', float('nan')):>12.3f}" for f in (full, lean)))
    print(f"{'bytes_per_vector':26}{local['bytes_per_vector']:>12.1f}{c['bytes_per_vector']:>12.1f}")
    print(f"{'build_s':26}{local['build_s']:>12.1f}{c['build_s']:>12.1f}")
    p50 = {name: float(np.percentile(f["latency_ms"], 50)) for name, f in (("local", local), ("full", full),
                                                                            ("lean", lean))}
    figures = {
        "num_vectors": num_vectors, "dimension": dimension, "num_shards": num_shards, "nlist": nlist, "pq_m": pq_m,
        "pq_bits": pq_bits,
        "nprobe": nprobe, "rerank_depth": c["rerank"], "measured_recall_at_10": c["measured_recall_at_10"],
        "clients": clients, "shard_cpus": cpus_per_shard, "gpu": use_gpu,
        "qps_ratio": min(full["qps_batch_1"] / local["qps_batch_1"], full["qps_batch_256"] / local["qps_batch_256"]),
        "qps_ratio_batch_1": full["qps_batch_1"] / local["qps_batch_1"],
        "qps_ratio_batch_256": full["qps_batch_256"] / local["qps_batch_256"],
        "p50_ms": p50["full"], "p50_lean_ms": p50["lean"], "p50_added_ms": p50["full"] - p50["local"],
        "p99_cluster_ms": float(np.percentile(full["latency_ms"], 99)),
        "qps_batch_1": full["qps_batch_1"], "qps_batch_256": full["qps_batch_256"],
        "lean_qps_batch_1": lean["qps_batch_1"], "lean_qps_batch_256": lean["qps_batch_256"],
        "recall_at_1": full["recall_at_1"], "recall_at_10": full["recall_at_10"],
        "bytes_per_vector": c["bytes_per_vector"], "build_s": c["build_s"], "baseline_build_s": local["build_s"],
        "cpu_ms_per_query": {"batch_1": full["cpu_1"], "batch_256": full["cpu_256"]},
        "lean_cpu_ms_per_query": {"batch_1": lean["cpu_1"], "batch_256": lean["cpu_256"]},
        "baseline_cpu_ms_per_query": {"batch_1": local["cpu_1"], "batch_256": local["cpu_256"]},
        "baseline": {name: local[name] for name in ("qps_batch_1", "qps_batch_256", "recall_at_1", "recall_at_10")},
        "grpc_alone": {"qps_batch_1": canned_qps, "cpu_ms_per_query": canned_cpu, "p50_ms": canned_p50},
        "machine": machine,
        "latency_stages_ms": {"full": full["latency_stages_ms"], "lean": lean["latency_stages_ms"]},
    }
    best_p50, best_256 = min(p50["full"], p50["lean"]), max(full["qps_batch_256"], lean["qps_batch_256"])
    targets = {"qps_ratio >= 0.8": figures["qps_ratio"] >= 0.8,
               "recall_at_1 >= 0.99": figures["recall_at_1"] >= 0.99,
               # issue 16's peer targets (a mainstream vector database on the same box and data, 250k vectors)
               "batch-1 p50 <= 1.5 ms": best_p50 <= 1.5, "batch-256 >= 5000 QPS": best_256 >= 5000,
               "recall_at_10 >= 0.99": min(full["recall_at_10"], lean["recall_at_10"]) >= 0.99,
               "build <= 120 s": c["build_s"] <= 120}
    if canned_cpu and local["cpu_1"]:
        # Where the in-process run kept every CPU busy, a served query costs at least its search plus gRPC,
        # and the cluster's at least what its shards spent plus gRPC.
        search_ms, grpc_ms = sum(local["cpu_1"].values()), sum(canned_cpu.values())
        print(f"gRPC alone: {grpc_ms:.2f} CPU ms per batch-1 query; with the search's {search_ms:.2f}, a service "
              f"through gRPC on a CPU-bound machine serves at most {search_ms / (search_ms + grpc_ms):.2f}x in-process "
              f"at batch 1")
        if full["cpu_1"].get("shards"):
            bound = search_ms / (full["cpu_1"]["shards"] + grpc_ms)
            figures["qps_ratio_batch_1_bound"] = bound
            print(f"shards: {full['cpu_1']['shards']:.2f} CPU ms per batch-1 query; with gRPC's, the cluster serves at "
                  f"most {bound:.2f}x in-process at batch 1 on a CPU-bound machine, whatever its gateway costs")
    # What no gateway could take out of a batch-1 search here: a gRPC round trip, the durable audit write every
    # call waits for, and one worker's own search (the workers search in parallel).
    floor = {stage: min(full["latency_stages_ms"][stage], lean["latency_stages_ms"][stage])
             for stage in ("audit_write", "shard_search")}
    figures["batch_1_floor_ms"] = canned_p50 + floor["audit_write"] + floor["shard_search"]
    print(f"batch-1 floor: a gRPC round trip {canned_p50:.2f} ms (p50, canned server) + the audit log's durable write "
          f"{floor['audit_write']:.2f} + a worker's own search {floor['shard_search']:.2f} = "
          f"{figures['batch_1_floor_ms']:.2f} ms, with no gateway work at all")
    for target, met in targets.items():
        print(f"target {target}: {'met' if met else 'MISSED'}")
    for f in (local, full, lean):
        f["latency_ms"] = None
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50k vectors, under a minute")
    parser.add_argument("--num-vectors", type=int, default=1_000_000)
    parser.add_argument("--num-shards", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--gpu", action="store_true", help="shards and the in-process index on the GPU (faiss-gpu)")
    args = parser.parse_args()
    main(num_vectors=args.num_vectors, num_shards=args.num_shards, clients=args.clients, duration_s=args.duration_s,
         quick=args.quick, use_gpu=args.gpu)
