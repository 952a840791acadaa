"""Offline checks of infra/: Terraform, checkov, the KubeRay manifests and the image recipe.

Terraform runs in a temporary copy of infra/terraform (nothing is written to the work tree) against
the machine's local provider mirror: `fmt -check`, `init -backend=false`, `validate`, `terraform
test` with a mocked AWS provider (each run block is reported as its own pytest test), and `plan`
of examples/complete with fake credentials. The Terraform tests skip only when `terraform` is not
installed. checkov (its own virtualenv: it pins packages that Ray cannot share) and kubectl (for
`kubectl kustomize`) are required.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
TF_ROOT = INFRA / "terraform"
TF_TESTS = TF_ROOT / "tests"
EXAMPLE = Path("examples/complete")
K8S = INFRA / "k8s"
CRD_DIR = K8S / "crds" / "kuberay-v1.7.0"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
K8S_VERSION = "1.33"  # the Terraform default kubernetes_version
TF_TIMEOUT_S = 600
GPU = "nvidia.com/gpu"

TERRAFORM = shutil.which("terraform")
needs_terraform = pytest.mark.skipif(
    TERRAFORM is None,
    reason="terraform is not installed; the Terraform checks need terraform >= 1.7 on PATH "
    "and the hashicorp/aws 5.x provider in a local mirror (TF_PLUGIN_DIR)",
)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------------------------------------
# Terraform


def _find_plugin_dir() -> Path | None:
    """Local provider mirror that holds hashicorp/aws: $TF_PLUGIN_DIR, else the usual places."""
    home = Path.home()
    candidates = [
        os.environ.get("TF_PLUGIN_DIR"),
        "/opt/tf-plugins",
        home / ".terraform.d" / "plugins",
        home / ".local" / "share" / "terraform" / "plugins",
        "/usr/local/share/terraform/plugins",
        "/usr/share/terraform/plugins",
        "/opt/terraform/plugins",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate).expanduser() / "registry.terraform.io/hashicorp/aws").is_dir():
            return Path(candidate).expanduser()
    for base in ("/opt", "/usr/local", "/usr/share", str(home)):
        for depth in ("*", "*/*", "*/*/*"):
            for hit in Path(base).glob(f"{depth}/registry.terraform.io/hashicorp/aws"):
                return hit.parents[2]
    return None


def _tf(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run terraform with no colour and no prompts; fail the test with its output on error."""
    proc = subprocess.run(
        [TERRAFORM, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TF_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"terraform {' '.join(args)} (in {cwd}) exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for terraform: no checkpoint calls, no user CLI config, no prompts."""
    if TERRAFORM is None:
        pytest.skip("terraform is not installed")
    rc = tmp_path_factory.mktemp("tfrc") / "terraformrc"
    rc.write_text("disable_checkpoint = true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "AWS_"))}
    env.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0", TF_CLI_CONFIG_FILE=str(rc))
    return env


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    found = _find_plugin_dir()
    if found is None:
        pytest.fail(
            "terraform is installed but no local provider mirror with hashicorp/aws was found; "
            "set TF_PLUGIN_DIR to the directory that contains registry.terraform.io/hashicorp/aws"
        )
    return found


@pytest.fixture(scope="session")
def tf_copy(tmp_path_factory: pytest.TempPathFactory, tf_env: dict[str, str], plugin_dir: Path) -> Path:
    """A copy of infra/terraform with the root module and the example initialised."""
    dest = tmp_path_factory.mktemp("infra") / "terraform"
    shutil.copytree(TF_ROOT, dest, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl"))
    (dest / EXAMPLE / "ci_override.tf").write_text(
        # Merged into the example's provider block: plan with no account and no network.
        'provider "aws" {\n'
        '  access_key                  = "AKIAIOSFODNN7EXAMPLE"\n'
        '  secret_key                  = "not-a-real-secret"\n'
        "  skip_credentials_validation = true\n"
        "  skip_requesting_account_id  = true\n"
        "  skip_metadata_api_check     = true\n"
        "  skip_region_validation      = true\n"
        "}\n"
    )
    for module in (dest, dest / EXAMPLE):
        _tf(["init", "-backend=false", f"-plugin-dir={plugin_dir}", "-input=false", "-no-color"], module, tf_env)
    return dest


@needs_terraform
def test_terraform_fmt(tf_env: dict[str, str]) -> None:
    _tf(["fmt", "-check", "-recursive", "-diff", "-no-color", str(TF_ROOT)], REPO, tf_env)


@needs_terraform
@pytest.mark.parametrize("module", [".", str(EXAMPLE)])
def test_terraform_validate(tf_copy: Path, tf_env: dict[str, str], module: str) -> None:
    out = json.loads(_tf(["validate", "-json", "-no-color"], tf_copy / module, tf_env).stdout)
    assert out["valid"], out
    assert out["warning_count"] == 0, out["diagnostics"]


def _tftest_runs() -> list[tuple[str, str]]:
    """(file, run) for every run block in infra/terraform/tests, read from the files themselves."""
    runs = []
    for path in sorted(TF_TESTS.glob("*.tftest.hcl")):
        for name in re.findall(r'^run\s+"([^"]+)"', path.read_text(), flags=re.M):
            runs.append((f"tests/{path.name}", name))
    return runs


@pytest.fixture(scope="session")
def tftest_results(tf_copy: Path, tf_env: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Run `terraform test -json` once; map (file, run) to its status and diagnostics."""
    proc = subprocess.run(
        [TERRAFORM, "test", "-json", "-no-color"],
        cwd=tf_copy,
        env=tf_env,
        capture_output=True,
        text=True,
        timeout=TF_TIMEOUT_S,
        check=False,
    )
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = (event.get("@testfile", ""), event.get("@testrun", ""))
        if event.get("type") == "test_run" and event["test_run"].get("progress") == "complete":
            results.setdefault(key, {"diagnostics": []})["status"] = event["test_run"]["status"]
        elif event.get("type") == "diagnostic" and key[1]:
            diag = event["diagnostic"]
            results.setdefault(key, {"diagnostics": []})["diagnostics"].append(
                f"{diag.get('summary')}: {diag.get('detail', '')}"
            )
    if not results:
        pytest.fail(f"terraform test reported no runs (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return results


@needs_terraform
@pytest.mark.parametrize(("tftest_file", "run"), _tftest_runs(), ids=[f"{f[6:-11]}::{r}" for f, r in _tftest_runs()])
def test_terraform_test(tftest_results: dict[tuple[str, str], dict[str, Any]], tftest_file: str, run: str) -> None:
    result = tftest_results.get((tftest_file, run))
    assert result is not None and "status" in result, f"terraform test did not run {tftest_file}::{run}"
    assert result["status"] == "pass", "\n".join(result["diagnostics"]) or result


@needs_terraform
def test_terraform_test_ran_every_block(tftest_results: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert set(tftest_results) == set(_tftest_runs())


@pytest.fixture(scope="session")
def example_plan(tf_copy: Path, tf_env: dict[str, str]) -> dict[str, Any]:
    """`terraform plan` of examples/complete, as JSON."""
    example = tf_copy / EXAMPLE
    _tf(
        [
            "plan",
            "-input=false",
            "-no-color",
            "-out=plan.bin",
            "-var-file=terraform.tfvars.example",
            "-var=shards=3",
        ],
        example,
        tf_env,
    )
    return json.loads(_tf(["show", "-json", "plan.bin"], example, tf_env).stdout)


def _planned(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Planned resources by address, across all modules."""
    found: dict[str, dict[str, Any]] = {}

    def walk(module: dict[str, Any]) -> None:
        for res in module.get("resources", []):
            found[res["address"]] = res
        for child in module.get("child_modules", []):
            walk(child)

    walk(plan["planned_values"]["root_module"])
    return found


def _one(plan: dict[str, Any], resource_type: str, suffix: str = "") -> dict[str, Any]:
    """The `values` of the only planned resource of a type (whose address ends with suffix)."""
    hits = [r for a, r in _planned(plan).items() if r["type"] == resource_type and a.endswith(suffix)]
    assert len(hits) == 1, f"expected one {resource_type}{suffix}, planned {[h['address'] for h in hits]}"
    return hits[0]["values"]


@needs_terraform
def test_example_plan_creates_everything_and_only_creates(example_plan: dict[str, Any]) -> None:
    actions = {tuple(c["change"]["actions"]) for c in example_plan["resource_changes"]}
    assert actions == {("create",)}
    types = {r["type"] for r in _planned(example_plan).values()}
    for expected in (
        "aws_vpc",
        "aws_nat_gateway",
        "aws_flow_log",
        "aws_eks_cluster",
        "aws_eks_node_group",
        "aws_iam_openid_connect_provider",
        "aws_s3_bucket",
        "aws_s3_bucket_policy",
        "aws_ecr_repository",
        "aws_lb",
        "aws_lb_listener",
    ):
        assert expected in types
    assert all(r["provider_name"] == "registry.terraform.io/hashicorp/aws" for r in _planned(example_plan).values())


@needs_terraform
def test_example_plan_sizes_gpu_nodes_by_shards(example_plan: dict[str, Any]) -> None:
    gpu = _one(example_plan, "aws_eks_node_group", '["gpu"]')
    assert gpu["scaling_config"] == [{"min_size": 0, "desired_size": 3, "max_size": 5}]
    assert gpu["instance_types"] == ["g5.xlarge"]


@needs_terraform
def test_example_plan_is_locked_down(example_plan: dict[str, Any]) -> None:
    block = _one(example_plan, "aws_s3_bucket_public_access_block")
    assert all(block[k] for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"))
    sse = _one(example_plan, "aws_s3_bucket_server_side_encryption_configuration")["rule"][0]
    assert sse["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "aws:kms"
    vpc_config = _one(example_plan, "aws_eks_cluster")["vpc_config"][0]
    assert vpc_config["endpoint_public_access"] and vpc_config["public_access_cidrs"] == ["203.0.113.0/24"]
    listener = _one(example_plan, "aws_lb_listener")
    assert (listener["protocol"], listener["alpn_policy"]) == ("TLS", "HTTP2Only")
    ingress = [r["values"] for r in _planned(example_plan).values() if r["address"].endswith("aws_vpc_security_group_ingress_rule.listener[\"203.0.113.0/24\"]")]
    assert len(ingress) == 1 and ingress[0]["from_port"] == 443
    for subnet in (r["values"] for r in _planned(example_plan).values() if r["type"] == "aws_subnet"):
        assert subnet["map_public_ip_on_launch"] is False


# ---------------------------------------------------------------------------------------------
# checkov


def _checkov_bin() -> str:
    repo_venv = str(pathlib.Path(__file__).resolve().parents[1] / ".venv-checkov" / "bin" / "checkov")
    for candidate in (os.environ.get("CHECKOV_BIN"), repo_venv, shutil.which("checkov"), "/opt/checkov/bin/checkov"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "checkov not found. Install it in its own virtualenv (it pins packages Ray cannot share): "
        "python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov==3.3.30 "
        "(or set CHECKOV_BIN)"
    )


@pytest.fixture(scope="session")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """checkov over infra/ (Terraform, Dockerfile, Kubernetes), once per session, by framework."""
    rc = tmp_path_factory.mktemp("checkov") / "terraformrc"
    rc.write_text("disable_checkpoint = true\n")
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE=str(rc), BC_SKIP_MAPPING="TRUE")
    cmd = [
        _checkov_bin(),
        "--directory",
        str(INFRA),
        "--framework",
        "terraform",
        "dockerfile",
        "kubernetes",
        "--skip-path",
        "k8s/crds",  # KubeRay's own CRDs, vendored for schema validation
        "--skip-path",
        r"\.terraform",
        "--skip-download",
        "--download-external-modules",
        "false",
        "--output",
        "json",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TF_TIMEOUT_S, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    reports = report if isinstance(report, list) else [report]
    return {r["check_type"]: r for r in reports}


def test_checkov_scanned_all_frameworks(checkov_report: dict[str, dict[str, Any]]) -> None:
    assert {"terraform", "dockerfile", "kubernetes"} <= set(checkov_report)
    assert checkov_report["terraform"]["summary"]["passed"] >= 100


def test_checkov_no_failed_checks(checkov_report: dict[str, dict[str, Any]]) -> None:
    # checkov knows no severities offline, so every failure counts, not only high ones.
    failed = [
        f"{c['check_id']} {c['check_name']} -- {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
        for r in checkov_report.values()
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "checkov failures:\n" + "\n".join(failed)


def test_checkov_skips_are_justified(checkov_report: dict[str, dict[str, Any]]) -> None:
    skipped = [c for r in checkov_report.values() for c in r["results"]["skipped_checks"]]
    assert skipped, "expected the documented inline skips to be reported"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) >= 40, f"{check['check_id']} on {check['resource']} is skipped without a real reason: {reason!r}"


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests


def _strict(schema: Any) -> Any:
    """Copy of a CRD schema that, like the API server's strict field validation, rejects unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="session")
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator, from the vendored KubeRay CRDs."""
    validators = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=_Loader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft202012Validator(schema)
    assert {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob")} <= set(validators)
    return validators


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render infra/k8s (kubectl kustomize); install kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """What `kubectl apply -k` would send, for serving/ and enroll/."""
    return {name: _kustomize(K8S / name) for name in ("serving", "enroll")}


def _raw_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*/*.yaml") if p.name != "kustomization.yaml" and "crds" not in p.parts and p.parent.name != "operator")


def _validate(doc: dict[str, Any], crd_validators: dict[tuple[str, str], Any]) -> list[str]:
    """Schema errors of one object: KubeRay kinds against the CRDs, core kinds via kubernetes-validate."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    name = doc.get("metadata", {}).get("name", "")
    errors = []
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        errors.append(f"metadata.name {name!r} is not a DNS-1123 label")
    if key in crd_validators:
        for err in crd_validators[key].iter_errors(doc):
            errors.append(f"{'.'.join(map(str, err.absolute_path))}: {err.message[:300]}")
    elif key[0].startswith("ray.io/"):
        errors.append(f"no vendored CRD for {key}")
    else:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{'.'.join(map(str, err.path))}: {err.message}")
    return errors


@pytest.mark.parametrize("path", _raw_manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_matches_schema(path: Path, crd_validators: dict[tuple[str, str], Any]) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        errors = _validate(doc, crd_validators)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors)


@pytest.mark.parametrize("kustomization", ["serving", "enroll"])
def test_rendered_manifests_match_schema(
    kustomization: str, rendered: dict[str, list[dict[str, Any]]], crd_validators: dict[tuple[str, str], Any]
) -> None:
    for doc in rendered[kustomization]:
        errors = _validate(doc, crd_validators)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors)
        assert doc["metadata"].get("namespace") == "gallery" or doc["kind"] == "Namespace"


def test_schema_check_catches_mistakes(crd_validators: dict[tuple[str, str], Any]) -> None:
    """The harness itself: a misspelt field and a wrong type must both be reported."""
    cluster = yaml.safe_load((K8S / "serving" / "raycluster.yaml").read_text())
    assert not _validate(cluster, crd_validators)
    cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["nodeSelectr"] = {"a": "b"}
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    errors = "\n".join(_validate(cluster, crd_validators))
    assert "nodeSelectr" in errors and "'two'" in errors
    service = yaml.safe_load((K8S / "serving" / "gateway-service.yaml").read_text())
    service["spec"]["ports"][0]["nodePort"] = "30051"
    assert _validate(service, crd_validators)


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role, pod spec) for every pod a RayCluster or RayJob creates."""
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]["spec"]
        spec = spec["rayClusterSpec"]
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def _ray_objects(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    docs = rendered["serving"] + rendered["enroll"]
    return _objects(docs, "RayCluster") + _objects(docs, "RayJob")


def _gateway(rendered: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], list[str]]:
    """The gateway container and its `gallery serve` arguments."""
    cluster = one_of(_objects(rendered["serving"], "RayCluster"))
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    gateway = one_of([c for c in head.get("initContainers", []) if c["name"] == "gateway"])
    script = gateway["args"][0].replace("\\\n", " ")
    serve = one_of([line for line in script.splitlines() if "gallery serve" in line])
    return gateway, shlex.split(serve.split("gallery serve", 1)[1])


def one_of(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_settings_come_from_gallery_env(rendered: dict[str, list[dict[str, Any]]]) -> None:
    settings = _env_file(K8S / "config" / "gallery.env")
    for doc in _ray_objects(rendered):
        for role, pod in _pod_templates(doc):
            for container in pod["containers"] + pod.get("initContainers", []):
                assert container["image"] == settings["GALLERY_IMAGE"], (doc["metadata"]["name"], role)
                assert {"configMapRef": {"name": "gallery-config"}} in container["envFrom"], (role, container["name"])
    accounts = {sa["metadata"]["name"]: sa for sa in _objects(rendered["serving"], "ServiceAccount")}
    for name, sa in accounts.items():
        key = "ROLE_ARN_" + name.upper().replace("-", "_")
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == settings[key]


def test_pods_use_the_terraform_service_accounts(rendered: dict[str, list[dict[str, Any]]]) -> None:
    accounts = {sa["metadata"]["name"] for sa in _objects(rendered["serving"], "ServiceAccount")}
    assert accounts == {"gallery-ray", "gallery-enroll"}  # the keys of var.service_accounts
    for doc in _ray_objects(rendered):
        expected = "gallery-ray" if doc["kind"] == "RayCluster" else "gallery-enroll"
        for role, pod in _pod_templates(doc):
            if role == "submitter":
                assert pod.get("automountServiceAccountToken") is False
            else:
                assert pod["serviceAccountName"] == expected, (doc["metadata"]["name"], role)


def test_gpu_pods_request_gpus_and_tolerate_the_taint(rendered: dict[str, list[dict[str, Any]]]) -> None:
    toleration = {"key": GPU, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    gpu_groups = 0
    for doc in _ray_objects(rendered):
        for role, pod in _pod_templates(doc):
            wants_gpu = any(GPU in c.get("resources", {}).get("limits", {}) for c in pod["containers"])
            on_gpu_nodes = pod.get("nodeSelector") == {"gallery-search/pool": "gpu"}
            assert wants_gpu == on_gpu_nodes, (doc["metadata"]["name"], role)
            assert (toleration in pod.get("tolerations", [])) == wants_gpu, (doc["metadata"]["name"], role)
            if not wants_gpu:
                assert pod.get("nodeSelector") == {"gallery-search/pool": "system"}, (doc["metadata"]["name"], role)
                continue
            gpu_groups += 1
            for container in pod["containers"]:
                resources = container["resources"]
                assert int(resources["limits"][GPU]) >= 1
                assert resources["requests"].get(GPU) == resources["limits"][GPU]
    assert gpu_groups == 2  # shards and embedders


def test_every_container_is_bounded_and_unprivileged(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for doc in _ray_objects(rendered):
        for role, pod in _pod_templates(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in pod["containers"] + pod.get("initContainers", []):
                where = (doc["metadata"]["name"], role, container["name"])
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
                assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where


def test_gateway_runs_gallery_serve_on_the_ray_cluster(rendered: dict[str, list[dict[str, Any]]]) -> None:
    gateway, args = _gateway(rendered)
    assert gateway["restartPolicy"] == "Always"  # a native sidecar: restarted on its own
    assert "startupProbe" not in gateway  # it would block the head container it waits for
    assert _flag(args, "--store") == "${GALLERY_STORE}"
    assert _flag(args, "--audit-store") == "s3://${GALLERY_BUCKET}"  # the role's append-only audit/ prefix
    assert _flag(args, "--ray-address") == "auto"
    assert (_flag(args, "--host"), _flag(args, "--port")) == ("0.0.0.0", "50051")
    assert {"name": "grpc", "containerPort": 50051, "protocol": "TCP"} in gateway["ports"]
    assert gateway["readinessProbe"]["grpc"]["port"] == 50051
    cluster = one_of(_objects(rendered["serving"], "RayCluster"))
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    head = one_of(cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"])
    assert mounts["/tmp/ray"] == {m["mountPath"]: m["name"] for m in head["volumeMounts"]}["/tmp/ray"]


def test_prometheus_scrapes_the_gateway_metrics(rendered: dict[str, list[dict[str, Any]]]) -> None:
    gateway, args = _gateway(rendered)
    cluster = one_of(_objects(rendered["serving"], "RayCluster"))
    annotations = cluster["spec"]["headGroupSpec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    # gallery serve binds its metrics to loopback unless told otherwise: Prometheus could not reach them
    assert _flag(args, "--metrics-host") == "0.0.0.0"
    assert _flag(args, "--metrics-port") == annotations["prometheus.io/port"]
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in gateway["ports"]


def test_one_gpu_worker_per_shard(rendered: dict[str, list[dict[str, Any]]]) -> None:
    _, args = _gateway(rendered)
    cluster = one_of(_objects(rendered["serving"], "RayCluster"))
    shards = one_of([g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "shards"])
    num_shards, gpus_per_shard = int(_flag(args, "--num-shards")), float(_flag(args, "--shard-num-gpus"))
    face_workers, gpus_per_face = int(_flag(args, "--face-workers")), float(_flag(args, "--face-num-gpus"))
    assert shards["replicas"] == shards["minReplicas"] == shards["maxReplicas"] == num_shards
    gpus = int(one_of(shards["template"]["spec"]["containers"])["resources"]["limits"][GPU])
    assert gpus == 1
    # every shard and face actor must fit on the GPU pods, or `gallery serve` waits forever for one
    assert num_shards * gpus_per_shard + face_workers * gpus_per_face <= num_shards * gpus


def test_gateway_service_reaches_the_head_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    service = one_of(_objects(rendered["serving"], "Service"))
    cluster = one_of(_objects(rendered["serving"], "RayCluster"))
    # KubeRay labels pods ray.io/cluster=<name> and ray.io/node-type=head|worker.
    assert service["spec"]["selector"] == {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}
    port = one_of(service["spec"]["ports"])
    assert (port["port"], port["targetPort"]) == (50051, 50051)
    assert service["spec"]["type"] == "NodePort" and service["spec"]["externalTrafficPolicy"] == "Local"
    settings = _env_file(K8S / "config" / "gallery.env")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert settings["GALLERY_GATEWAY"] == f"{host}:{port['port']}"


def test_enrollment_job_has_every_setting_it_expands(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = one_of(_objects(rendered["enroll"], "RayJob"))
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    assert entrypoint[:3] == ["python", "-m", "jobs.enroll"]
    for flag in ("--manifest", "--collection", "--gateway", "--output"):
        assert flag in entrypoint
    assert _flag(entrypoint, "--manifest").startswith("s3://")
    # K8sJobMode runs the entrypoint through the submitter pod's shell, so its env must define each variable.
    submitter = one_of(job["spec"]["submitterPodTemplate"]["spec"]["containers"])
    maps = {ref["configMapRef"]["name"] for ref in submitter["envFrom"]}
    assert maps == {"gallery-config", "gallery-enroll-params"}
    defined = set(_env_file(K8S / "config" / "gallery.env")) | set(_env_file(K8S / "enroll" / "job.env"))
    used = set(re.findall(r"\$\{(\w+)\}", job["spec"]["entrypoint"]))
    assert used and used <= defined, used - defined
    assert job["spec"]["shutdownAfterJobFinishes"] is True


@needs_terraform
def test_manifests_agree_with_terraform(example_plan: dict[str, Any], rendered: dict[str, list[dict[str, Any]]]) -> None:
    planned = _planned(example_plan)
    service = one_of(_objects(rendered["serving"], "Service"))
    assert _one(example_plan, "aws_lb_target_group")["port"] == one_of(service["spec"]["ports"])["nodePort"]
    gpu = _one(example_plan, "aws_eks_node_group", '["gpu"]')
    assert gpu["labels"] == {"gallery-search/pool": "gpu"}
    assert gpu["taint"] == [{"key": GPU, "value": "true", "effect": "NO_SCHEDULE"}]
    assert _one(example_plan, "aws_eks_node_group", '["system"]')["labels"] == {"gallery-search/pool": "system"}
    roles = {r["values"]["name"] for r in planned.values() if r["type"] == "aws_iam_role" and ".module.irsa[" in r["address"]}
    accounts = {sa["metadata"]["name"] for sa in _objects(rendered["serving"], "ServiceAccount")}
    assert roles == {f"gallery-search-{sa}" for sa in accounts}
    variables = example_plan["configuration"]["root_module"]["module_calls"]["gallery"]["module"]["variables"]
    assert variables["kubernetes_namespace"]["default"] == service["metadata"]["namespace"]


# ---------------------------------------------------------------------------------------------
# Image recipe


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))


def test_image_recipe_installs_the_gpu_stack() -> None:
    text = DOCKERFILE.read_text()
    base = one_of(re.findall(r"^FROM (\S+)", text, flags=re.M))
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base), base
    args = _dockerfile_args()
    assert re.search(r'pip install --index-url "\$TORCH_INDEX_URL" "torch==\$\{TORCH_VERSION\}"', text)
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")
    assert re.search(r'pip install "faiss-gpu==\$\{FAISS_GPU_VERSION\}"', text)
    assert "pip uninstall -y faiss-cpu" in text
    assert re.search(r'pip install "ray\[default,data\]==\$\{RAY_VERSION\}" \.', text)
    for path in ("cluster", "jobs", "proto", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", text, flags=re.M), path
        assert f"!{path}" in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text()


def test_image_runs_as_the_manifests_user(rendered: dict[str, list[dict[str, Any]]]) -> None:
    user = one_of(re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), flags=re.M))
    for doc in _ray_objects(rendered):
        for _, pod in _pod_templates(doc):
            assert (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])) == user


def test_ray_version_matches_the_image(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ray_version = _dockerfile_args()["RAY_VERSION"]
    for doc in _ray_objects(rendered):
        spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
        assert spec["rayVersion"] == ray_version, doc["metadata"]["name"]
