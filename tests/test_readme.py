"""The README's examples as a newcomer runs them, against a real `gallery serve`: its grpcurl steps (as the
same calls, made from Python), then its Python example, read from README.md and run unchanged but for the
server's address. And every command the READMEs give uses flags that exist."""

import inspect
import re
import shlex
import threading
from pathlib import Path

import grpc
import pytest
from gallery.v1 import gallery_pb2 as pb
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from support import Served

from cluster.serve.cli import serve
from jobs.build_index import build_index
from jobs.calibrate import calibrate
from jobs.enroll import enroll
from jobs.reembed import reembed
from jobs.sample_manifest import sample_manifest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_ADDRESS = "127.0.0.1:50051"
# The commands the READMEs give, and the entry functions whose keyword arguments are their flags.
ENTRY_POINTS = {"gallery serve": serve, "python -m jobs.enroll": enroll, "python -m jobs.build_index": build_index,
                "python -m jobs.sample_manifest": sample_manifest, "python -m jobs.reembed": reembed,
                "python -m jobs.calibrate": calibrate}


def _code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def _grpcurl_commands() -> list[list[str]]:
    """The arguments of each grpcurl command of the README's first block that has any."""
    block = next(b for b in _code_blocks("sh") if b.startswith("grpcurl "))
    lines = block.replace("\\\n", " ").splitlines()
    commands = [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert all(c[0] == "grpcurl" for c in commands), commands
    return [c[1:] for c in commands]


def _grpcurl(channel: grpc.Channel, args: list[str], token: str):
    """What `grpcurl -plaintext [-H HEADER] [-d JSON] ADDRESS (list SERVICE | SERVICE/METHOD)` does, on `channel`,
    with `$(cat gallery-data.admin-token)` in a header read as the shell would: the served store's token."""
    args = [a for a in args if a != "-plaintext"]
    data, metadata = "{}", []
    if args[0] == "-H":
        key, _, value = args[1].partition(": ")
        metadata.append((key, value.replace("$(cat gallery-data.admin-token)", token)))
        args = args[2:]
    if args[0] == "-d":
        data, args = args[1], args[2:]
    address, *target = args
    assert address == README_ADDRESS, f"the README's examples call {README_ADDRESS}, as `gallery serve` serves"
    if target[0] == "list":
        service = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel)).FindServiceByName(
            target[1])
        return [m.name for m in service.methods]
    service_name, method_name = target[0].split("/")
    method = descriptor_pool.Default().FindServiceByName(service_name).methods_by_name[method_name]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(f"/{service_name}/{method_name}", request_serializer=request_class.SerializeToString,
                               response_deserializer=response_class.FromString)
    return call(json_format.Parse(data, request_class()), timeout=60, metadata=metadata)


def _run(code: str, timeout_s: float) -> dict:
    """Runs the code in a namespace of its own, with a deadline; returns the namespace."""
    namespace, errors = {"__name__": "__readme__"}, []

    def run():
        try:
            exec(compile(code, f"{README} (Python example)", "exec"), namespace)
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the README's Python example did not finish in {timeout_s} s"
    if errors:
        raise errors[0]
    return namespace


@pytest.mark.slow
def test_the_readme_examples_run_as_written(tmp_path, capsys):
    served = Served(tmp_path / "gallery-data", tmp_path / "serve.log")
    try:
        answers = {}
        for args in _grpcurl_commands():
            answers[args[-1]] = _grpcurl(served.channel, args, served.token)
        assert {"CreateCollection", "AddEmbeddings", "SearchByEmbedding"} <= set(answers["gallery.v1.Gallery"])
        created = answers["gallery.v1.Gallery/CreateCollection"].collection
        assert (created.collection_id, created.dimension) == ("staff", 4)
        assert list(answers["gallery.v1.Gallery/AddEmbeddings"].face_ids) == ["alice"]
        found = answers["gallery.v1.Gallery/SearchByEmbedding"]
        [alice] = found.results[0].candidates
        assert alice.face.face_id == "alice" and alice.similarity == pytest.approx(1.0, abs=1e-6)
        # one face: no calibration yet, as the README says
        assert (alice.false_match_rate, alice.gallery_false_match_probability) == (-1.0, -1.0)
        assert answers["grpc.health.v1.Health/Check"].status == health_pb2.HealthCheckResponse.SERVING

        [code] = _code_blocks("python")
        assert f'"{README_ADDRESS}"' in code and '"gallery-data.admin-token"' in code
        code = code.replace(f'"{README_ADDRESS}"', f'"{served.address}"')
        example = _run(code.replace('"gallery-data.admin-token"', repr(str(served.token_path))), timeout_s=180)

        D, ids = example["D"], example["ids"]
        assert [row[0] for row in ids] == ["person-0", "person-1", "person-2"] and (D[:, 0] > 0.99).all()
        full, best = example["full"], example["best"]
        assert full.calibration.source == pb.CALIBRATION_SOURCE_GALLERY and full.calibration.impostor_pairs > 0
        assert best.face.face_id == "person-0" and best.face.metadata["team"] == "a"
        assert best.similarity == pytest.approx(1.0, abs=1e-5)
        assert 0 < best.false_match_rate <= best.gallery_false_match_probability <= 1
        printed = [line.split() for line in capsys.readouterr().out.splitlines()]
        assert printed == [["person-0", str(D[0, 0])],
                           ["person-0", str(best.similarity), str(best.gallery_false_match_probability)]]
    finally:
        assert served.stop() == 0


def _documented_commands(readme: Path) -> list[tuple[str, list[str]]]:
    """(command, its --flags) for every command of ENTRY_POINTS in a README's code blocks and code spans."""
    text = readme.read_text()
    fence = re.compile(r"^```\w*\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)
    pieces = [line for block in fence.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    pieces += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", fence.sub("", text))]
    commands = []
    for piece in pieces:
        for match in re.finditer("(" + "|".join(map(re.escape, ENTRY_POINTS)) + r")\b(.*)", piece):
            own = re.split(r"&&|\||;", match.group(2))[0]  # up to the next command of a pipeline
            commands.append((match.group(1), re.findall(r"--([a-z][a-z0-9-]*)", own)))
    return commands


def test_the_commands_in_the_readmes_use_real_flags():
    found = {}
    for readme in (README, ROOT / "jobs" / "README.md", ROOT / "infra" / "README.md"):
        for command, flags in _documented_commands(readme):
            found.setdefault((readme.relative_to(ROOT).as_posix(), command), set()).update(flags)
    for (readme, command), flags in found.items():
        accepted = set(inspect.signature(ENTRY_POINTS[command]).parameters)
        unknown = sorted(f for f in flags if f.replace("-", "_") not in accepted
                         and f.removeprefix("no-").replace("-", "_") not in accepted)
        assert unknown == [], f"{readme}: `{command}` has no flag(s) {unknown}"
    # the check saw the commands that matter to a newcomer, flags and all
    assert {"manifest", "collection", "gateway", "output"} <= found["infra/README.md", "python -m jobs.enroll"]
    assert {"manifest", "collection", "output"} <= found["jobs/README.md", "python -m jobs.enroll"]
    assert found["jobs/README.md", "python -m jobs.sample_manifest"] == {"output"}
    assert {"source", "target", "output", "embedding-model"} <= found["jobs/README.md", "python -m jobs.reembed"]
    assert {"manifest", "output", "collection", "group-columns"} <= found["jobs/README.md", "python -m jobs.calibrate"]
    assert "store" in found["README.md", "gallery serve"]
