"""The cluster definitions in cluster/, checked offline: every file parses; `ray up` files against Ray's own
cluster-launcher schema; KubeRay and Kubernetes manifests against the fields those APIs define; nothing is
exposed without authentication; the entry points they name exist; versions agree with pyproject.toml."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from lmft_core.run_config import available_profiles

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_UP = ["aws.yaml", "onprem.yaml"]
KUBERNETES = ["mlflow-server.yaml", "raycluster.yaml", "rayjob.yaml", "shared-storage.yaml"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RAY_VERSION = next(d.split("==")[1] for d in PYPROJECT["dependencies"] if d.startswith("ray["))
IMAGE_TAG = f"lmft:{PYPROJECT['version']}-ray{RAY_VERSION}"


def k8s(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kubernetes" / name).read_text()) if d]


def ray_up(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_every_file_is_a_known_definition():
    files = sorted(str(p.relative_to(CLUSTER)) for p in CLUSTER.rglob("*") if p.is_file())
    assert files == sorted(RAY_UP + [f"kubernetes/{n}" for n in KUBERNETES] + ["Dockerfile", "Dockerfile.dockerignore"])


# ---- fields of the APIs the manifests use -------------------------------------------------------------
# The names below were read from KubeRay v1.7.0's CRDs (ray-project/kuberay, tag v1.7.0:
# ray-operator/config/crd/bases/ray.io_rayclusters.yaml and ray.io_rayjobs.yaml, version v1; the pod
# template there embeds Kubernetes' PodTemplateSpec) and from the Kubernetes API reference (apps/v1
# Deployment, core/v1 Service, PersistentVolumeClaim, ConfigMap). Only the fields lmft's manifests may use
# are listed; each is a real field of its API. A manifest field not listed here fails the test.

@dataclass(frozen=True)
class Obj:
    fields: dict
    required: tuple = ()


MAP = "a map of names to values"  # labels, rayStartParams, resource quantities, ConfigMap data
QUANTITY_OR_PORT = (int, str)
ENV = Obj({"name": str, "value": str, "valueFrom": Obj({
    "secretKeyRef": Obj({"name": str, "key": str, "optional": bool}, ("key",))})}, ("name",))
ENV_FROM = Obj({"secretRef": Obj({"name": str, "optional": bool}), "prefix": str})
PROBE = Obj({"httpGet": Obj({"path": str, "port": QUANTITY_OR_PORT}, ("port",)), "initialDelaySeconds": int,
             "periodSeconds": int, "timeoutSeconds": int, "failureThreshold": int})
CONTAINER = Obj({
    "name": str, "image": str, "imagePullPolicy": ("Always", "IfNotPresent", "Never"), "command": [str], "args": [str],
    "workingDir": str, "env": [ENV], "envFrom": [ENV_FROM], "resources": Obj({"requests": MAP, "limits": MAP}),
    "ports": [Obj({"containerPort": int, "name": str, "protocol": str}, ("containerPort",))],
    "volumeMounts": [Obj({"name": str, "mountPath": str, "readOnly": bool, "subPath": str}, ("mountPath", "name"))],
    "readinessProbe": PROBE, "livenessProbe": PROBE}, ("name",))
VOLUME = Obj({"name": str, "persistentVolumeClaim": Obj({"claimName": str, "readOnly": bool}, ("claimName",)),
              "emptyDir": Obj({"medium": str, "sizeLimit": str}), "configMap": Obj({"name": str, "defaultMode": int})},
             ("name",))
POD_TEMPLATE = Obj({
    "metadata": Obj({"labels": MAP, "annotations": MAP}),
    "spec": Obj({"containers": [CONTAINER], "volumes": [VOLUME], "nodeSelector": MAP, "serviceAccountName": str,
                 "securityContext": Obj({"fsGroup": int, "runAsUser": int, "runAsNonRoot": bool}),
                 "tolerations": [Obj({"key": str, "operator": ("Exists", "Equal"), "value": str,
                                      "effect": ("NoSchedule", "PreferNoSchedule", "NoExecute")})]},
                ("containers",))})
RAY_CLUSTER_SPEC = Obj({
    "rayVersion": str, "enableInTreeAutoscaling": bool, "suspend": bool,
    "authOptions": Obj({"mode": ("disabled", "token"), "secretName": str, "enableK8sTokenAuth": bool}),
    "headGroupSpec": Obj({"serviceType": str, "enableIngress": bool, "rayStartParams": MAP, "labels": MAP,
                          "template": POD_TEMPLATE}, ("template",)),
    "workerGroupSpecs": [Obj({"groupName": str, "replicas": int, "minReplicas": int, "maxReplicas": int,
                              "idleTimeoutSeconds": int, "rayStartParams": MAP, "labels": MAP, "template": POD_TEMPLATE},
                             ("groupName", "maxReplicas", "minReplicas", "template"))]}, ("headGroupSpec",))
RAY_JOB_SPEC = Obj({"entrypoint": str, "shutdownAfterJobFinishes": bool, "ttlSecondsAfterFinished": int,
                    "activeDeadlineSeconds": int, "backoffLimit": int, "runtimeEnvYAML": str,
                    "submissionMode": ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"),
                    "rayClusterSpec": RAY_CLUSTER_SPEC})
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
KINDS = {
    ("ray.io/v1", "RayCluster"): RAY_CLUSTER_SPEC,
    ("ray.io/v1", "RayJob"): RAY_JOB_SPEC,
    ("apps/v1", "Deployment"): Obj({"replicas": int, "selector": Obj({"matchLabels": MAP}),
                                    "strategy": Obj({"type": ("Recreate", "RollingUpdate")}), "template": POD_TEMPLATE},
                                   ("selector", "template")),
    ("v1", "Service"): Obj({"type": SERVICE_TYPES, "selector": MAP, "ports": [Obj(
        {"name": str, "port": int, "targetPort": QUANTITY_OR_PORT, "protocol": str}, ("port",))]}, ("ports",)),
    ("v1", "PersistentVolumeClaim"): Obj({
        "accessModes": [("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")],
        "storageClassName": str, "resources": Obj({"requests": MAP})}, ("accessModes", "resources")),
}


def resource_schema(api_version: str, kind: str) -> Obj:
    metadata = Obj({"name": str, "namespace": str, "labels": MAP, "annotations": MAP}, ("name",))
    if (api_version, kind) == ("v1", "ConfigMap"):
        return Obj({"apiVersion": str, "kind": str, "metadata": metadata, "data": MAP}, ("apiVersion", "kind", "metadata"))
    return Obj({"apiVersion": str, "kind": str, "metadata": metadata, "spec": KINDS[(api_version, kind)]},
               ("apiVersion", "kind", "metadata", "spec"))


def field_errors(value, schema, where: str) -> list[str]:
    """What in ``value`` the schema does not allow (unknown fields, missing required ones, wrong types)."""
    if isinstance(schema, Obj):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {value!r}"]
        errors = [f"{where}.{k}: not a field here" for k in value if k not in schema.fields]
        errors += [f"{where}: required field {k!r} missing" for k in schema.required if k not in value]
        for k, v in value.items():
            if k in schema.fields:
                errors += field_errors(v, schema.fields[k], f"{where}.{k}")
        return errors
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {value!r}"]
        return [e for i, v in enumerate(value) for e in field_errors(v, schema[0], f"{where}[{i}]")]
    if schema is MAP:
        ok = isinstance(value, dict) and all(isinstance(v, (str, int, float)) for v in value.values())
        return [] if ok else [f"{where}: expected a map of names to values, got {value!r}"]
    if isinstance(schema, tuple) and all(isinstance(s, str) for s in schema):
        return [] if value in schema else [f"{where}: {value!r} is not one of {schema}"]
    types = schema if isinstance(schema, tuple) else (schema,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    return [] if ok else [f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {value!r}"]


def manifest_errors(doc: dict, where: str) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in KINDS and key != ("v1", "ConfigMap"):
        return [f"{where}: unexpected resource {key}"]
    return field_errors(doc, resource_schema(*key), where)


@pytest.mark.parametrize("name", KUBERNETES)
def test_kubernetes_manifest_uses_only_fields_of_its_api(name):
    docs = k8s(name)
    assert docs
    for i, doc in enumerate(docs):
        assert manifest_errors(doc, f"{name}[{i}] {doc.get('kind')}") == []


def test_the_field_check_catches_mistakes():
    cluster = k8s("raycluster.yaml")[0]
    for path, typo in [(("spec",), "workerGroupSpec"), (("spec", "headGroupSpec", "template", "spec", "containers", 0), "envFrm")]:
        doc = copy.deepcopy(cluster)
        node = doc
        for p in path:
            node = node[p]
        node[typo] = []
        assert any(f"{typo}: not a field here" in e for e in manifest_errors(doc, "x")), typo
    doc = copy.deepcopy(cluster)
    del doc["spec"]["workerGroupSpecs"][0]["groupName"]
    doc["spec"]["authOptions"]["mode"] = "Token"
    errors = manifest_errors(doc, "x")
    assert any("'groupName' missing" in e for e in errors) and any("'Token' is not one of" in e for e in errors)


# ---- Ray clusters -------------------------------------------------------------------------------------

def ray_cluster_specs() -> dict[str, dict]:
    (cluster,), (job,) = k8s("raycluster.yaml"), k8s("rayjob.yaml")
    return {"raycluster.yaml": cluster["spec"], "rayjob.yaml": job["spec"]["rayClusterSpec"]}


def pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def test_rayjob_runs_the_same_cluster_as_raycluster():
    specs = ray_cluster_specs()
    assert specs["rayjob.yaml"] == specs["raycluster.yaml"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_ray_cluster_is_token_authenticated_with_a_cpu_head_and_gpu_workers(name):
    spec = ray_cluster_specs()[name]
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    head_resources = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_resources["limits"]
    gpu_groups = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups and all(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1 for g in gpu_groups)
    for pod in pod_specs(spec):
        ray_container = pod["containers"][0]
        assert {"secretRef": {"name": "lmft-mlflow-client"}} in ray_container["envFrom"]  # MLflow URI and credentials
        mounts = {m["mountPath"]: m["name"] for m in ray_container["volumeMounts"]}
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        assert claims[mounts["/shared"]] == "lmft-shared"  # the same shared volume on every pod


def test_rayjob_entrypoint_is_the_main_job_in_the_image():
    (job,) = k8s("rayjob.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1] == "/app/pipelines/full.py"
    assert (REPO / "pipelines" / "full.py").is_file() and "COPY pipelines pipelines" in dockerfile_lines()
    assert argv[argv.index("--profile") + 1] == "paper" and "paper" in available_profiles()
    assert argv[argv.index("--workdir") + 1].startswith("/shared/") and argv[argv.index("--manifest") + 1].startswith("/shared/")


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_file_is_valid_for_the_cluster_launcher(name):
    config = ray_up(name)
    validate_config(prepare_config(copy.deepcopy(config)))  # as `ray up` does; raises naming the bad key
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if " start " in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)  # token auth on every node
    assert any(k.endswith(".ray/auth_token") for k in config["file_mounts"])  # one token for all nodes
    head_start = next(c for c in starts if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard` (SSH), never exposed


def test_aws_cluster_has_a_cpu_head_and_gpu_workers_running_the_lmft_image():
    config = ray_up("aws.yaml")
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 and t.get("max_workers", 0) >= 1 for t in types.values())
    assert config["docker"]["image"].endswith("/" + IMAGE_TAG)


def test_onprem_cluster_installs_the_project():
    config = ray_up("onprem.yaml")
    assert config["file_mounts"]["/home/ubuntu/lmft"] == "." and any("pip install" in c and "~/lmft" in c for c in config["setup_commands"])


def test_every_script_the_definitions_name_exists():
    named = set()
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            named |= set(re.findall(r"pipelines/\w+\.py", path.read_text()))
    assert named and all((REPO / n).is_file() for n in named), named


# ---- versions -----------------------------------------------------------------------------------------

def dockerfile_lines() -> list[str]:
    return [line.strip() for line in (CLUSTER / "Dockerfile").read_text().splitlines()]


def test_versions_agree():
    import ray

    assert ray.__version__ == RAY_VERSION  # this environment (the tests' local clusters) runs the pinned Ray
    for name, spec in ray_cluster_specs().items():
        assert spec["rayVersion"] == RAY_VERSION, name
    images = [c["image"] for name in KUBERNETES for doc in k8s(name) for pod in _pods(doc) for c in pod["containers"]]
    images.append(ray_up("aws.yaml")["docker"]["image"])
    assert images and all(i.endswith("/" + IMAGE_TAG) for i in images), images
    # the Dockerfile installs the project as pyproject.toml pins it (Ray included) and documents that tag
    lines = dockerfile_lines()
    base = next(line for line in lines if line.startswith("FROM "))
    python = re.match(r"FROM python:(\d+\.\d+)", base).group(1)
    assert PYPROJECT["requires-python"] == ">=3.11" and tuple(map(int, python.split("."))) >= (3, 11)
    assert 'RUN pip install --no-cache-dir ".[server]"' in lines
    assert any(IMAGE_TAG in line for line in lines if line.startswith("#   docker build"))
    for line in lines:
        if line.startswith("COPY "):
            assert all((REPO / src).exists() for src in line.split()[1:-1]), line


def _pods(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayJob":
        return pod_specs(spec["rayClusterSpec"])
    if doc["kind"] == "RayCluster":
        return pod_specs(spec)
    return [spec["template"]["spec"]] if "template" in spec else []


# ---- the MLflow tracking server -----------------------------------------------------------------------

def mlflow_docs() -> dict[str, dict]:
    return {d["kind"]: d for d in k8s("mlflow-server.yaml")}


def test_mlflow_server_runs_with_authentication_and_no_public_address():
    from mlflow.cli import cli
    from mlflow.server.security_utils import is_allowed_host_header

    docs = mlflow_docs()
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ctx = cli.commands["server"].make_context("server", container["command"][2:])  # the installed CLI parses them
    assert container["command"][:2] == ["mlflow", "server"] and ctx.params["app_name"] == "basic-auth"
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "lmft-mlflow-admin"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "lmft-mlflow-admin"
    service = docs["Service"]["spec"]
    assert service["type"] == "ClusterIP"
    assert not any(d["kind"] == "Ingress" or d.get("spec", {}).get("type") in ("LoadBalancer", "NodePort")
                   for name in KUBERNETES for d in k8s(name))
    # the Host headers it answers: Ray pods by the Service's name, people through kubectl port-forward
    hosts = ctx.params["allowed_hosts"].split(",")
    name, port = docs["Service"]["metadata"]["name"], service["ports"][0]["port"]
    for host in (f"{name}:{port}", f"{name}.lmft.svc.cluster.local:{port}", f"localhost:{port}", f"127.0.0.1:{port}"):
        assert is_allowed_host_header(hosts, host), host
    assert not is_allowed_host_header(hosts, f"attacker.example:{port}")


def test_mlflow_auth_config_is_read_by_mlflow_and_stored_on_the_volume(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    docs = mlflow_docs()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_dir = Path(env["MLFLOW_AUTH_CONFIG_PATH"]).parent
    ini_name = Path(env["MLFLOW_AUTH_CONFIG_PATH"]).name
    configmap = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == mounts[str(config_dir)])
    assert configmap == docs["ConfigMap"]["metadata"]["name"]
    (tmp_path / ini_name).write_text(docs["ConfigMap"]["data"][ini_name])
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(tmp_path / ini_name))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    auth = read_auth_config()
    assert auth.admin_username == "admin" and auth.admin_password is None  # the password comes from the Secret only
    assert auth.auth_cache_ttl_seconds == 60
    # the runs, the users and the artifacts all live on the persistent volume
    data_mount = next(path for path, vol in mounts.items() if vol == "data")
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if v["name"] == "data")
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    ctx_params = {a.split("=")[0]: a.split("=", 1)[1] for a in container["command"][2:]}
    for stored in (auth.database_uri.removeprefix("sqlite:///"), ctx_params["--backend-store-uri"].removeprefix("sqlite:///"),
                   ctx_params["--artifacts-destination"]):
        assert stored.startswith(data_mount + "/"), stored


# ---- what users must create by hand is documented -----------------------------------------------------

def referenced_secrets() -> dict[str, set[str]]:
    """Secret name -> keys the manifests read from it (KubeRay reads auth_token from authOptions.secretName)."""
    out: dict[str, set[str]] = {}

    def walk(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                out.setdefault(node["secretKeyRef"]["name"], set()).add(node["secretKeyRef"]["key"])
            if "secretRef" in node:
                out.setdefault(node["secretRef"]["name"], set())
            if "secretName" in node:
                out.setdefault(node["secretName"], set()).add("auth_token")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for name in KUBERNETES:
        for doc in k8s(name):
            walk(doc)
    return out


def test_the_docs_show_how_to_create_every_secret_the_manifests_read():
    readme = (REPO / "docs" / "cluster.md").read_text()
    secrets = referenced_secrets()
    assert set(secrets) == {"lmft-ray-token", "lmft-mlflow-admin", "lmft-mlflow-client"}
    secrets["lmft-mlflow-client"] |= {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    for name, keys in secrets.items():
        command = re.search(rf"kubectl create secret generic {name}((?:\\\n|[^\n])*)", readme)
        assert command, name
        assert all(f"--from-literal={key}=" in command.group(1) for key in keys), (name, keys)
    service = mlflow_docs()["Service"]
    uri = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert f"--from-literal=MLFLOW_TRACKING_URI={uri}" in readme
