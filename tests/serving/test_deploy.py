"""The deployment files (serving/deploy/) checked offline: no Docker engine, no cluster.

What each check would catch:

- compose files against the compose-spec JSON schema (vendored by `check-jsonschema`): a
  misspelt or misplaced key, a wrong type; then what a schema cannot see: an unpinned image, a
  published TF Serving port (the gateway bypassed), a socket the gateway and TF Serving do not
  share, a mounted file that does not exist, a GPU file without a GPU reservation, the GPU and
  CPU files drifting apart;
- Kubernetes manifests (and the ConfigMaps kustomize generates) against the Kubernetes 1.34
  schemas of `kubernetes-validate`, strict; then the references between them: Service and
  NetworkPolicy selectors that match no pod, a ConfigMap or claim that does not exist, a probe
  on an undeclared port, TF Serving without a GPU or reachable by other pods than the gateway,
  TF Serving's flags differing from the compose file's;
- `models.config` with `model_server_config_pb2` from `tensorflow-serving-api`; batching and
  monitoring configs with `serving.deploy.protos` (the wheel ships neither message); `policy.json`
  with the gateway's own `load_policy`;
- `Dockerfile.gateway`: pinned base image, the compose entrypoint and command, every first-party
  package the gateway imports copied, every third-party one in requirements.txt;
- the embedded model server and the gateway started with exactly the compose file's command
  lines (container paths and ports mapped to a temporary folder and free loopback ports, a
  fakeredis TCP server standing in for `redis:6379`), both health checks of the compose file
  run, and the victim queried through the gateway.

Every validator is also shown failing on a broken copy of the file it checks.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from serving import testing
from serving.deploy.protos import parse_batching_parameters, parse_monitoring_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "serving" / "deploy"
CONFIG = DEPLOY / "config"
COMPOSE_FILES = ("docker-compose.gpu.yml", "docker-compose.cpu.yml")
K8S_VERSION = "1.34.0"
FIRST_PARTY = ("common", "serving", "detector", "attack", "victim_export")
HAS_GATEWAY = (ROOT / "serving" / "gateway" / "__main__.py").is_file()
needs_gateway = pytest.mark.skipif(not HAS_GATEWAY, reason="serving/gateway not written yet")


# -- loading ---------------------------------------------------------------------------------------
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}` / `${VAR:-default}` substitution (defaults unless `env` sets VAR)."""
    env = env or {}
    return _VAR_RE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)


def load_compose(name_or_text: str) -> dict:
    text = name_or_text if "\n" in name_or_text else (DEPLOY / name_or_text).read_text()
    return yaml.safe_load(interpolate(text))


def compose_schema() -> dict:
    from importlib.resources import files

    return json.loads((files("check_jsonschema.builtin_schemas.vendor")
                       / "compose-spec.json").read_text())


def compose_schema_errors(doc: dict) -> list[str]:
    import jsonschema

    schema = compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    return [f"{err.json_path}: {err.message}" for err in validator.iter_errors(doc)]


def _pinned(image: str) -> bool:
    """A tag with a digit, not latest (or a digest)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


def _flag(args: list[str], name: str) -> str | None:
    """The value of `--name=V` or `--name V` in a command list."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _mounts(service: dict) -> list[tuple[str, str]]:
    """(source, container path) for each short-syntax volume of a compose service."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            found.append((parts[0], parts[1]))
        else:
            found.append((volume.get("source", ""), volume["target"]))
    return found


def _host_path(service: dict, container_path: str, base: Path) -> Path | None:
    """Where a container path of a service comes from, for bind mounts (None: named volume)."""
    best = None
    for source, target in _mounts(service):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[1]):
                best = (source, target)
    if best is None or not best[0].startswith((".", "/")):
        return None
    rest = container_path[len(best[1]):].lstrip("/")
    return (base / best[0] / rest).resolve()


def compose_semantic_errors(doc: dict, *, gpu: bool, base: Path = DEPLOY) -> list[str]:
    """What the schema cannot see: the deployment's own rules."""
    errors = []
    services = doc.get("services", {})
    networks = doc.get("networks") or {}
    volumes = doc.get("volumes") or {}
    for name, svc in services.items():
        if "image" in svc and not _pinned(svc["image"]):
            errors.append(f"{name}: image {svc['image']!r} is not pinned to a version")
        for net in svc.get("networks", []):
            if net not in networks:
                errors.append(f"{name}: network {net!r} is not declared")
        for dep in svc.get("depends_on", {}):
            if dep not in services:
                errors.append(f"{name}: depends_on {dep!r}, no such service")
        for source, target in _mounts(svc):
            if target in ("/models", "/detectors", "/secrets"):
                continue  # victims, detectors, the watermark key: user data, not in the repo
            if source.startswith((".", "/")):
                if not (base / source).exists():
                    errors.append(f"{name}: bind mount source {source!r} does not exist")
            elif source not in volumes:
                errors.append(f"{name}: volume {source!r} is not declared")
        for port in svc.get("ports", []):
            if name not in ("gateway",) and not str(port).startswith("127.0.0.1:"):
                errors.append(f"{name}: publishes {port!r} beyond loopback (only the gateway "
                              "may be reachable from outside)")
    for required in ("tfserving", "gateway", "redis"):
        if required not in services:
            errors.append(f"service {required!r} missing")
        elif "healthcheck" not in services[required]:
            errors.append(f"{required}: no healthcheck")
    if errors:
        return errors
    tfs, gw = services["tfserving"], services["gateway"]
    if tfs.get("ports"):
        errors.append("tfserving: publishes ports; the gateway could be bypassed")
    for net in tfs.get("networks", []):
        if not (networks.get(net) or {}).get("internal"):
            errors.append(f"tfserving: network {net!r} is not internal")
    if set(tfs.get("networks", [])) & set(gw.get("networks", [])):
        errors.append("tfserving and gateway share a network: the gateway must use the socket")
    command = tfs.get("command", [])
    if tfs.get("entrypoint") != ["/usr/bin/tensorflow_model_server"]:
        errors.append("tfserving: entrypoint is not /usr/bin/tensorflow_model_server")
    for flag in ("--model_config_file", "--batching_parameters_file", "--monitoring_config_file"):
        value = _flag(command, flag)
        if value is None:
            errors.append(f"tfserving: {flag} missing")
            continue
        host = _host_path(tfs, value, base)
        if host is None or not host.is_file():
            errors.append(f"tfserving: {flag}={value} is not a mounted file ({host})")
    if _flag(command, "--enable_batching") not in ("true", "1"):
        errors.append("tfserving: --enable_batching=true missing")
    config_host = _host_path(tfs, _flag(command, "--model_config_file") or "", base)
    if config_host is not None and config_host.is_file() and \
            "version_labels" in config_host.read_text() and \
            _flag(command, "--allow_version_labels_for_unavailable_models") not in ("true", "1"):
        # TF Serving assigns the labels of the initial config before the versions have loaded
        errors.append("tfserving: models.config has version_labels but "
                      "--allow_version_labels_for_unavailable_models=true is missing (TF "
                      "Serving would refuse to start)")
    socket_path = _flag(command, "--grpc_socket_path")
    upstream = _flag(gw.get("command", []), "--upstream") or ""
    if not socket_path or upstream != f"unix:{socket_path}":
        errors.append(f"gateway --upstream {upstream!r} is not TF Serving's socket "
                      f"{socket_path!r}")
    else:
        folder = socket_path.rsplit("/", 1)[0]
        tfs_vol = {t: s for s, t in _mounts(tfs)}.get(folder)
        gw_vol = {t: s for s, t in _mounts(gw)}.get(folder)
        if not tfs_vol or tfs_vol != gw_vol or tfs_vol.startswith((".", "/")):
            errors.append(f"socket folder {folder} is not one named volume in both services")
    devices = (((tfs.get("deploy") or {}).get("resources") or {}).get("reservations")
               or {}).get("devices") or []
    has_gpu = any("gpu" in (d.get("capabilities") or []) for d in devices)
    if gpu and not has_gpu:
        errors.append("tfserving: no GPU reservation (deploy.resources.reservations.devices)")
    if gpu != tfs["image"].endswith("-gpu") or (not gpu and has_gpu):
        errors.append(f"tfserving: image {tfs['image']!r} does not match the file's kind")
    return errors


# -- compose ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_valid(name):
    doc = load_compose(name)
    assert compose_schema_errors(doc) == []
    assert compose_semantic_errors(doc, gpu="gpu" in name) == []


def test_compose_gpu_and_cpu_differ_only_in_image_and_gpu():
    gpu, cpu = load_compose(COMPOSE_FILES[0]), load_compose(COMPOSE_FILES[1])
    assert gpu["services"]["tfserving"]["image"] == "tensorflow/serving:2.21.0-gpu"
    assert cpu["services"]["tfserving"]["image"] == "tensorflow/serving:2.21.0"
    for doc in (gpu, cpu):
        doc["services"]["tfserving"].pop("image")
        doc["services"]["tfserving"].pop("deploy", None)
    assert gpu == cpu


COMPOSE_BREAKS = [
    # (what, old, new, expected error fragment, schema or semantic)
    ("misspelt key", "      interval: 15s\n", "      intervall: 15s\n", "intervall", "schema"),
    ("wrong type", '    user: "10001:10001"\n', "    user: [10001]\n", "is not of type 'string'",
     "schema"),
    ("REST published", "    expose:\n", "    ports:\n      - \"8501:8501\"\n    expose:\n",
     "tfserving: publishes", "semantic"),
    ("unpinned image", "tensorflow/serving:2.21.0-gpu", "tensorflow/serving:latest-gpu",
     "not pinned", "semantic"),
    ("missing config file", "--batching_parameters_file=/config/batching.config",
     "--batching_parameters_file=/config/batching.conf", "not a mounted file", "semantic"),
    ("socket mismatch", "      - unix:/sock/tfs.sock\n", "      - unix:/tmp/tfs.sock\n",
     "is not TF Serving's socket", "semantic"),
    ("no GPU", "              capabilities: [gpu]\n", "              capabilities: [utility]\n",
     "no GPU reservation", "semantic"),
    ("labels at start", "      - --allow_version_labels_for_unavailable_models=true\n", "",
     "--allow_version_labels_for_unavailable_models=true is missing", "semantic"),
]


@pytest.mark.parametrize("what, old, new, fragment, kind", COMPOSE_BREAKS,
                         ids=[b[0] for b in COMPOSE_BREAKS])
def test_compose_checks_catch_a_broken_file(what, old, new, fragment, kind):
    text = (DEPLOY / COMPOSE_FILES[0]).read_text()
    assert old in text
    doc = load_compose(text.replace(old, new, 1))
    errors = (compose_schema_errors(doc) if kind == "schema"
              else compose_semantic_errors(doc, gpu=True))
    assert any(fragment in e for e in errors), errors


# -- Kubernetes ------------------------------------------------------------------------------------
def kustomization() -> dict:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


def kustomize_build(kust: dict | None = None, base: Path = DEPLOY) -> list[dict]:
    """What `kubectl kustomize` gives, minus the hash suffixes: the resources, the generated
    ConfigMaps, the namespace and the labels applied (enough to validate offline)."""
    kust = kust or kustomization()
    docs = []
    for resource in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((base / resource).read_text()) if d]
    for gen in kust.get("configMapGenerator", []):
        data = {Path(f).name: (base / f).read_text() for f in gen["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": gen["name"]}, "data": data})
    for doc in docs:
        if doc["kind"] != "Namespace" and "namespace" in kust:
            doc["metadata"]["namespace"] = kust["namespace"]
        for label in kust.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    return docs


def k8s_schema_errors(docs: list[dict]) -> list[str]:
    import kubernetes_validate

    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = "/".join(str(p) for p in err.path)
            errors.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: "
                          f"{where}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            errors.append(f"{doc.get('kind')}: no schema ({err})")
    return errors


def _by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_templates(docs):
    for kind in ("Deployment", "StatefulSet"):
        for name, doc in _by_kind(docs, kind).items():
            yield name, doc, doc["spec"]["template"]


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def k8s_reference_errors(docs: list[dict]) -> list[str]:
    errors = []
    configmaps = _by_kind(docs, "ConfigMap")
    claims = set(_by_kind(docs, "PersistentVolumeClaim"))
    templates = list(_pod_templates(docs))
    pods = {name: tpl["metadata"]["labels"] for name, _, tpl in templates}
    for name, doc, tpl in templates:
        if not _matches(doc["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"]):
            errors.append(f"{name}: selector does not match its pod template")
        claims_here = claims | {t["metadata"]["name"]
                                for t in doc["spec"].get("volumeClaimTemplates", [])}
        for vol in tpl["spec"].get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] not in configmaps:
                errors.append(f"{name}: ConfigMap {vol['configMap']['name']!r} does not exist")
            if "persistentVolumeClaim" in vol and \
                    vol["persistentVolumeClaim"]["claimName"] not in claims_here:
                errors.append(f"{name}: claim {vol['persistentVolumeClaim']['claimName']!r} "
                              "does not exist")
        volume_names = {v["name"] for v in tpl["spec"].get("volumes", [])} | \
            {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for ctr in tpl["spec"]["containers"]:
            if not _pinned(ctr["image"]):
                errors.append(f"{name}: image {ctr['image']!r} is not pinned")
            ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
            for mount in ctr.get("volumeMounts", []):
                if mount["name"] not in volume_names:
                    errors.append(f"{name}: mounts undeclared volume {mount['name']!r}")
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = ctr.get(probe_name) or {}
                for handler in ("tcpSocket", "httpGet", "grpc"):
                    port = (probe.get(handler) or {}).get("port")
                    if port is not None and port not in ports and port not in ports.values():
                        errors.append(f"{name}: {probe_name} on undeclared port {port!r}")
    for name, svc in _by_kind(docs, "Service").items():
        targets = [labels for labels in pods.values()
                   if _matches(svc["spec"]["selector"], labels)]
        if not targets:
            errors.append(f"Service {name}: selector matches no pod")
    for name, hpa in _by_kind(docs, "HorizontalPodAutoscaler").items():
        target = _by_kind(docs, hpa["spec"]["scaleTargetRef"]["kind"]).get(
            hpa["spec"]["scaleTargetRef"]["name"])
        if target is None:
            errors.append(f"HPA {name}: target does not exist")
        elif not all("cpu" in (c.get("resources") or {}).get("requests", {})
                     for c in target["spec"]["template"]["spec"]["containers"]):
            errors.append(f"HPA {name}: target containers request no CPU")
    policies = _by_kind(docs, "NetworkPolicy")
    if not any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
               for p in policies.values()):
        errors.append("no default-deny ingress NetworkPolicy")
    tfs_labels = pods.get("tfserving", {})
    gw_labels = pods.get("gateway", {})
    guarding = [p for p in policies.values()
                if p["spec"]["podSelector"] and
                _matches(p["spec"]["podSelector"].get("matchLabels"), tfs_labels)]
    if not guarding:
        errors.append("no NetworkPolicy selects the tfserving pods")
    for pol in guarding:
        for rule in pol["spec"].get("ingress", []):
            sources = rule.get("from")
            if not sources:
                errors.append(f"NetworkPolicy {pol['metadata']['name']}: a rule lets any pod "
                              "reach tfserving")
                continue
            grpc_ports = {p.get("port") for p in rule.get("ports", [])}
            for src in sources:
                gateway_src = "namespaceSelector" not in src and _matches(
                    (src.get("podSelector") or {}).get("matchLabels"), gw_labels) and \
                    (src.get("podSelector") or {}).get("matchLabels")
                if 8500 in grpc_ports and not gateway_src:
                    errors.append(f"NetworkPolicy {pol['metadata']['name']}: gRPC 8500 open "
                                  f"to {src}")
    if not any(_matches((src.get("podSelector") or {}).get("matchLabels") or {"_": "_"},
                        gw_labels)
               for pol in guarding for rule in pol["spec"].get("ingress", [])
               for src in rule.get("from", [])):
        errors.append("the gateway pods are not let through to tfserving")
    tfs = _by_kind(docs, "Deployment").get("tfserving")
    if tfs is not None:
        limits = tfs["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        if "nvidia.com/gpu" not in limits:
            errors.append("tfserving: no nvidia.com/gpu limit")
    return errors


def _container(docs, kind, name):
    return _by_kind(docs, kind)[name]["spec"]["template"]["spec"]["containers"][0]


def test_k8s_manifests_valid():
    docs = kustomize_build()
    kinds = sorted({d["kind"] for d in docs})
    assert {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "Service",
            "StatefulSet"} <= set(kinds)
    assert k8s_schema_errors(docs) == []
    assert k8s_reference_errors(docs) == []


def test_k8s_flags_match_the_compose_file():
    """Same image and TF Serving flags as compose (less the socket); same gateway command line,
    except the upstream: the tfserving Service instead of the socket, Redis its Service."""
    docs = kustomize_build()
    compose = load_compose(COMPOSE_FILES[0])["services"]
    tfs = _container(docs, "Deployment", "tfserving")
    assert tfs["image"] == compose["tfserving"]["image"]
    assert tfs["command"] == compose["tfserving"]["entrypoint"]
    assert tfs["args"] == [a for a in compose["tfserving"]["command"]
                           if not a.startswith("--grpc_socket_path")]
    gw = _container(docs, "Deployment", "gateway")
    assert gw["command"] == compose["gateway"]["entrypoint"]
    services = _by_kind(docs, "Service")
    upstream = _flag(gw["args"], "--upstream")
    host, port = upstream.split(":")
    assert host in services and int(port) in [p["port"] for p in services[host]["spec"]["ports"]]
    redis_host = re.match(r"redis://([^:/]+):(\d+)/", _flag(gw["args"], "--state")).group(1)
    assert redis_host in services
    swap = {"--upstream": upstream}
    assert [swap.get(gw["args"][i - 1], a) if i else a for i, a in enumerate(gw["args"])] == \
        [swap.get(compose["gateway"]["command"][i - 1], a) if i else a
         for i, a in enumerate(compose["gateway"]["command"])]
    readiness = gw["readinessProbe"]["grpc"]
    assert readiness["port"] == int(_flag(gw["args"], "--port"))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_kustomize_builds_the_same_objects():
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    strip = re.compile(r"-[a-z0-9]{10}$")  # kustomize's hash suffix on generated ConfigMaps
    names = sorted((d["kind"], strip.sub("", d["metadata"]["name"]) if d["kind"] == "ConfigMap"
                    else d["metadata"]["name"]) for d in built)
    assert names == sorted((d["kind"], d["metadata"]["name"]) for d in kustomize_build())
    assert k8s_schema_errors(built) == []


K8S_BREAKS = [
    ("wrong type", "k8s/gateway.yaml", "  replicas: 2\n", "  replicas: two\n", "replicas"),
    ("misspelt field", "k8s/gateway.yaml", "          readinessProbe:\n",
     "          readinessProbes:\n", "readinessProbes"),
    ("no GPU", "k8s/tfserving.yaml", "              nvidia.com/gpu: 1\n", "",
     "no nvidia.com/gpu limit"),
    ("selector typo", "k8s/networkpolicy.yaml",
     "app.kubernetes.io/name: gateway\n      ports:\n        - protocol: TCP\n"
     "          port: 8500\n",
     "app.kubernetes.io/name: gatway\n      ports:\n        - protocol: TCP\n"
     "          port: 8500\n",
     "gateway pods are not let through"),
    ("open to all", "k8s/networkpolicy.yaml",
     "    - from:\n        - podSelector:\n            matchLabels:\n"
     "              app.kubernetes.io/name: gateway\n      ports:\n        - protocol: TCP\n"
     "          port: 8500\n",
     "    - ports:\n        - protocol: TCP\n          port: 8500\n", "lets any pod reach"),
    ("missing ConfigMap", "k8s/tfserving.yaml", "            name: tfserving-config\n",
     "            name: tfserving-configs\n", "does not exist"),
]


@pytest.mark.parametrize("what, path, old, new, fragment", K8S_BREAKS,
                         ids=[b[0] for b in K8S_BREAKS])
def test_k8s_checks_catch_a_broken_file(tmp_path, what, path, old, new, fragment):
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "deploy" / path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    docs = kustomize_build(base=tmp_path / "deploy")
    errors = k8s_schema_errors(docs) + k8s_reference_errors(docs)
    assert any(fragment in e for e in errors), errors


# -- TF Serving's text configs and the gateway policy --------------------------------------------
def test_tensorflow_serving_configs_parse():
    from serving.model_server import load_model_server_config

    config = load_model_server_config(CONFIG / "models.config")
    names = [m.name for m in config.model_config_list.config]
    assert names == ["cifar10_cnn", "gtsrb_resnet34"]
    for model in config.model_config_list.config:
        assert model.base_path == f"/models/{model.name}"
        assert model.model_platform == "tensorflow"
        pinned = set(model.model_version_policy.specific.versions)
        assert set(model.version_labels.values()) <= pinned  # a label names a served version
    batching = parse_batching_parameters(CONFIG / "batching.config")
    assert batching.max_batch_size.value == batching.allowed_batch_sizes[-1] == 64
    monitoring = parse_monitoring_config(CONFIG / "monitoring.config")
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"
    prometheus = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    compose = load_compose(COMPOSE_FILES[0])["services"]
    assert jobs["tfserving"]["metrics_path"] == monitoring.prometheus_config.path
    assert jobs["tfserving"]["static_configs"][0]["targets"] == [
        f"tfserving:{_flag(compose['tfserving']['command'], '--rest_api_port')}"]
    assert jobs["gateway"]["static_configs"][0]["targets"] == [
        f"gateway:{_flag(compose['gateway']['command'], '--metrics-port')}"]


def test_runtime_protos_match_the_installed_ones_where_shipped():
    """Where a TF Serving build ships the modules, the runtime messages parse the same text."""
    from serving.deploy import protos

    for fn in (protos.batching_parameters_class, protos.monitoring_config_class):
        runtime = fn(prefer_installed=False)
        assert runtime.DESCRIPTOR.full_name.startswith("tensorflow.serving.")
        installed = fn()
        names = {f.name: (f.number, f.type) for f in runtime.DESCRIPTOR.fields}
        assert names.items() <= {f.name: (f.number, f.type)
                                 for f in installed.DESCRIPTOR.fields}.items()


@needs_gateway
def test_policy_loads_with_the_gateway():
    from serving.gateway.config import load_policy

    policy = load_policy(str(CONFIG / "policy.json"))
    config = load_model_server_config_names()
    assert set(policy.models) <= config  # the gateway exposes only served victims
    assert policy.auth_required


def load_model_server_config_names() -> set[str]:
    from serving.model_server import load_model_server_config

    return {m.name for m in load_model_server_config(CONFIG / "models.config")
            .model_config_list.config}


CONFIG_BREAKS = [
    ("models.config", 'model_platform: "tensorflow"', 'model_plattform: "tensorflow"',
     "model_plattform"),
    ("batching.config", "max_batch_size { value: 64 }", "max_batch_sise { value: 64 }",
     "max_batch_sise"),
    ("batching.config", "allowed_batch_sizes: 64", "allowed_batch_sizes: 48",
     "equal to max_batch_size"),
    ("monitoring.config", "  enable: true", "  enabled: true", "enabled"),
    ("policy.json", '"action": "degrade"', '"action": "explode"', "on_flag"),
]


@pytest.mark.parametrize("name, old, new, fragment", CONFIG_BREAKS,
                         ids=[f"{b[0]}:{b[3]}" for b in CONFIG_BREAKS])
def test_config_checks_catch_a_broken_file(tmp_path, name, old, new, fragment):
    from common.errors import UsageError
    from serving.model_server import load_model_server_config

    text = (CONFIG / name).read_text()
    assert old in text
    broken = tmp_path / name
    broken.write_text(text.replace(old, new, 1))
    if name == "policy.json":
        if not HAS_GATEWAY:
            pytest.skip("serving/gateway not written yet")
        from serving.gateway.config import load_policy

        check = load_policy
    else:
        check = {"models.config": load_model_server_config,
                 "batching.config": parse_batching_parameters,
                 "monitoring.config": parse_monitoring_config}[name]
    with pytest.raises(UsageError, match=re.escape(fragment)):
        check(broken if name != "policy.json" else str(broken))


# -- the gateway image -----------------------------------------------------------------------------
def dockerfile_errors(text: str, compose_gateway: dict) -> list[str]:
    errors = []
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), image)
        if not _pinned(image):
            errors.append(f"FROM {image}: base image not pinned")
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    if not entry or json.loads(entry.group(1)) != compose_gateway["entrypoint"]:
        errors.append("ENTRYPOINT differs from the compose file's gateway entrypoint")
    if not cmd or json.loads(cmd.group(1)) != compose_gateway["command"]:
        errors.append("CMD differs from the compose file's gateway command")
    copied = set(re.findall(r"^COPY (\w+)/ ", text, re.M))
    for package in sorted(gateway_first_party_packages() - copied):
        errors.append(f"the gateway imports {package}/ but the image does not COPY it")
    if "COPY requirements.txt" not in text or "pip install -r requirements.txt" not in text:
        errors.append("requirements.txt not installed")
    if not re.search(r"^USER (?!root|0\b)", text, re.M):
        errors.append("the gateway runs as root")
    return errors


def _module_file(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def gateway_import_closure() -> tuple[set[str], set[str]]:
    """(first-party modules, third-party top-level names) imported, transitively, by the
    gateway's files (lazy imports inside functions included)."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = [f"serving.gateway.{p.stem}" for p in (ROOT / "serving" / "gateway").glob("*.py")]
    todo += ["serving.deploy.healthcheck"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        parts = module.split(".")
        for i in range(1, len(parts)):  # parent packages' __init__ run too
            todo.append(".".join(parts[:i]))
        package = module if path.name == "__init__.py" else ".".join(parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in FIRST_PARTY:
                    if _module_file(name) is not None:
                        todo.append(name)
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    third.add(top)
    return {m for m in seen if _module_file(m)}, third


def gateway_first_party_packages() -> set[str]:
    return {m.split(".")[0] for m in gateway_import_closure()[0]}


def requirement_names(path: Path = ROOT / "requirements.txt") -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


@needs_gateway
def test_dockerfile_builds_what_the_gateway_imports():
    text = (DEPLOY / "Dockerfile.gateway").read_text()
    gateway = load_compose(COMPOSE_FILES[0])["services"]["gateway"]
    assert dockerfile_errors(text, gateway) == []
    assert gateway["build"]["dockerfile"] == "serving/deploy/Dockerfile.gateway"
    assert (DEPLOY / gateway["build"]["context"]).resolve() == ROOT
    # every third-party import of the gateway is installed by requirements.txt
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    wanted = requirement_names()
    missing = {top: dists.get(top) for top in gateway_import_closure()[1]
               if not {d.lower().replace("_", "-") for d in dists.get(top, [])} & wanted}
    assert missing == {}, f"imported by the gateway, not in requirements.txt: {missing}"
    ignore = (DEPLOY / "Dockerfile.gateway.dockerignore").read_text()
    for package in gateway_first_party_packages():
        assert f"!{package}/" in ignore


@needs_gateway
def test_dockerfile_check_catches_a_broken_file():
    text = (DEPLOY / "Dockerfile.gateway").read_text()
    gateway = load_compose(COMPOSE_FILES[0])["services"]["gateway"]
    broken = text.replace("COPY detector/ detector/\n", "").replace(
        "python:3.11.14-slim-bookworm", "python:latest")
    errors = dockerfile_errors(broken, gateway)
    assert any("imports detector/" in e for e in errors), errors
    assert any("not pinned" in e for e in errors), errors


# -- the containers' command lines, run ----------------------------------------------------------
def map_command(args: list[str], paths: dict[str, Path], ports: dict[str, int],
                hosts: dict[str, str]) -> list[str]:
    """A container command line with its container paths, ports and host names replaced."""
    out = []
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if not eq:
            flag, value = (args[i - 1] if i else ""), arg
        if flag in ports:
            value = str(ports[flag])
        for container, host in paths.items():
            value = re.sub(rf"(^|:){re.escape(container)}(?=/|$)",
                           lambda m, h=host: m.group(1) + str(h), value)
        for name, target in hosts.items():
            value = value.replace(name, target)
        out.append(f"{flag}={value}" if eq else value)
    return out


def test_map_command():
    args = ["--port=8500", "--model_config_file=/config/models.config", "--upstream",
            "unix:/sock/tfs.sock", "--state", "redis://redis:6379/0", "--metrics-port", "9102"]
    got = map_command(args, {"/config": Path("/t/c"), "/sock": Path("/t/s")},
                      {"--port": 1, "--metrics-port": 2}, {"redis:6379": "127.0.0.1:3"})
    assert got == ["--port=1", "--model_config_file=/t/c/models.config", "--upstream",
                   "unix:/t/s/tfs.sock", "--state", "redis://127.0.0.1:3/0", "--metrics-port",
                   "2"]


def _start(args: list[str], port: int, log: Path, *, cwd: Path, env: dict) -> testing.Running:
    """`python *args` exactly as given (a compose command line, so not through
    `testing.model_server`/`testing.gateway`, which write their own flags), stderr in `log`;
    stopped by `testing.Running.stop` like every other server of the tests."""
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    return testing.Running(port, proc=proc, log=log, args=[sys.executable, *args])


@pytest.fixture(scope="module")
def deployment(model_base, tmp_path_factory):
    """TF Serving (the embedded server) and the gateway, run with the compose command lines.

    /models and /config are one temporary folder: two tiny victims there as `cifar10_cnn` and
    `gtsrb_resnet34` (copies of the serving tests' `tiny` versions 1 and 2), and the files of
    serving/deploy/config/ copied unchanged (the embedded server finds `/models/<name>` beside
    models.config, as documented in victim_export.models_config). /sock is a short temporary
    folder (a socket path has at most 107 bytes); redis:6379 is a fakeredis TCP server; ports
    are free loopback ports, and both servers get `--host 127.0.0.1` so that nothing listens
    beyond loopback. Both processes start at once (the gateway waits for its upstream)."""
    import threading

    from fakeredis import TcpFakeServer

    src, tiny = model_base
    compose = load_compose(COMPOSE_FILES[0])["services"]
    mnt = tmp_path_factory.mktemp("mnt")
    shutil.copytree(src / "tiny" / "1", mnt / "cifar10_cnn" / "1")
    shutil.copytree(src / "tiny" / "2", mnt / "gtsrb_resnet34" / "1")
    for path in CONFIG.iterdir():
        shutil.copy(path, mnt / path.name)
    # The shipped policy's per-model detectors, misinformation models and watermark key are
    # trained exports the operator mounts at /detectors and /secrets (docs/runbook.md); the tiny
    # victims here have none, so this gateway runs the policy without its per_model section.
    policy = json.loads((mnt / "policy.json").read_text())
    policy.pop("per_model", None)
    (mnt / "policy.json").write_text(json.dumps(policy))
    sock_dir = Path(tempfile.mkdtemp(prefix="mx", dir="/tmp"))
    logs = tmp_path_factory.mktemp("logs")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    servers: list[testing.Running] = []
    redis_server = None
    result = {"models": {"cifar10_cnn": tiny[1], "gtsrb_resnet34": tiny[2]}, "mnt": mnt,
              "socket": sock_dir / "tfs.sock", "env": env, "logs": logs}
    try:
        port = testing.pick_unused_port
        tfs_ports = {"--port": port(), "--rest_api_port": port()}
        tfs_args = map_command(compose["tfserving"]["command"],
                               {"/models": mnt, "/config": mnt, "/sock": sock_dir}, tfs_ports, {})
        servers.append(_start(["-m", "serving.model_server", *tfs_args, "--host=127.0.0.1"],
                              tfs_ports["--port"], logs / "tfserving.log", cwd=ROOT, env=env))
        result.update(tfs_port=tfs_ports["--port"], tfs_args=tfs_args)
        if HAS_GATEWAY:
            from serving.gateway.__main__ import main as gateway_main

            redis_port = port()
            redis_server = TcpFakeServer(("127.0.0.1", redis_port), server_type="redis")
            threading.Thread(target=redis_server.serve_forever, daemon=True).start()
            gw_ports = {"--port": port(), "--metrics-port": port()}
            gw_args = map_command(compose["gateway"]["command"],
                                  {"/config": mnt, "/sock": sock_dir}, gw_ports,
                                  {"redis:6379": f"127.0.0.1:{redis_port}"})
            state = _flag(gw_args, "--state")
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                assert gateway_main(["keys", "add", "--state", state, "--client", "ci"]) == 0
            result["key"] = out.getvalue().strip()
            entry = compose["gateway"]["entrypoint"]
            assert entry[0] == "python"
            servers.append(_start([*entry[1:], *gw_args, "--host", "127.0.0.1"],
                                  gw_ports["--port"], logs / "gateway.log", cwd=logs, env=env))
            result.update(gw_port=gw_ports["--port"], metrics_port=gw_ports["--metrics-port"],
                          gw_args=gw_args, state=state)
        for server in servers:
            testing.wait_for_health(server.target, proc=server.proc, log_file=server.log,
                                    timeout=120)
        yield result
    finally:
        # the gateway first, while its upstream still answers
        codes = [server.stop() for server in reversed(servers)]
        if redis_server is not None:
            redis_server.shutdown()
            redis_server.server_close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert codes == [0] * len(codes), f"servers exited with {codes}"


def _images(n: int = 4) -> np.ndarray:
    from tests.serving.conftest import IMAGE_SHAPE

    return np.random.default_rng(0).integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)


def test_tfserving_command_line_serves_over_the_socket(deployment):
    """The compose command line starts the server; the socket answers like TF Serving."""
    import tensorflow as tf

    from serving.client import ServingClient

    assert _flag(deployment["tfs_args"], "--enable_batching") == "true"
    images = _images()
    with ServingClient(f"unix:{deployment['socket']}", "cifar10_cnn") as client:
        got = client.predict(images)
    want = tf.nn.softmax(deployment["models"]["cifar10_cnn"](images.astype(np.float32))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    with ServingClient(f"unix:{deployment['socket']}", "gtsrb_resnet34",
                       version_label="stable") as client:
        assert client.predict(images).shape == (4, 3)


def test_compose_healthchecks_pass(deployment):
    """The health check commands of the compose file, run here with the ports mapped."""
    compose = load_compose(COMPOSE_FILES[0])["services"]
    test = compose["tfserving"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    cmd = [a.replace("/8500", f"/{deployment['tfs_port']}") for a in test[1:]]
    assert subprocess.run(cmd, timeout=30).returncode == 0
    if not HAS_GATEWAY:
        pytest.skip("serving/gateway not written yet")
    test = compose["gateway"]["healthcheck"]["test"]
    cmd = [sys.executable if a == "python" else a.replace(":8500", f":{deployment['gw_port']}")
           for a in test[1:]]
    out = subprocess.run(cmd, timeout=60, capture_output=True, text=True, cwd=ROOT,
                         env=deployment["env"])
    assert out.returncode == 0 and "SERVING" in out.stdout, out


@needs_gateway
def test_gateway_command_line_filters_in_front(deployment):
    """Through the gateway started with the compose command line: the victim's answer with a
    key, UNAUTHENTICATED without one, and the gateway's metrics on its metrics port."""
    import grpc

    from serving.client import ServingClient, ServingError

    images = _images()
    target = f"127.0.0.1:{deployment['gw_port']}"
    with ServingClient(f"unix:{deployment['socket']}", "cifar10_cnn") as direct:
        want = direct.predict(images)
    with ServingClient(target, "cifar10_cnn", api_key=deployment["key"]) as client:
        np.testing.assert_allclose(client.predict(images), want, atol=1e-6)
    with pytest.raises(ServingError) as err, ServingClient(target, "cifar10_cnn") as anonymous:
        anonymous.predict(images)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    scrape = urllib.request.urlopen(
        f"http://127.0.0.1:{deployment['metrics_port']}/metrics", timeout=10).read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name for f in text_string_to_metric_families(scrape)}
    from serving.gateway.metrics import METRIC_NAMES

    assert {n.removesuffix("_total") for n in METRIC_NAMES} <= families
    assert re.search(r'mx_gateway_queries_total\{client="ci"\} [1-9]', scrape), scrape
    (deployment["logs"] / "metrics.prom").write_text(scrape)  # kept for the operator docs


@needs_gateway
def test_gateway_refusal_codes(deployment):
    """What a client sees for each refusal, through the compose-configured gateway."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.codec import from_ndarray
    from serving.gateway.__main__ import main as gateway_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert gateway_main(["keys", "add", "--state", deployment["state"], "--client", "small",
                             "--budget", "4"]) == 0
    small = out.getvalue().strip()

    def predict(key, model="cifar10_cnn", rows=4, input_name="images"):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs[input_name].CopyFrom(from_ndarray(_images(rows)))
        metadata = () if key is None else (("x-api-key", key),)
        with grpc.insecure_channel(f"127.0.0.1:{deployment['gw_port']}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            try:
                stub.Predict(request, metadata=metadata, timeout=30)
            except grpc.RpcError as err:
                return err.code().name, err.details()
        return "OK", ""

    seen = {
        "no key": predict(None),
        "unknown key": predict("not-a-key"),
        "within budget": predict(small),
        "over budget": predict(small),
        "model not exposed": predict(deployment["key"], model="cifar10_ood"),
        "bad input name": predict(deployment["key"], input_name="pixels"),
    }
    (deployment["logs"] / "refusals.json").write_text(json.dumps(seen, indent=1))
    scrape = urllib.request.urlopen(
        f"http://127.0.0.1:{deployment['metrics_port']}/metrics", timeout=10).read().decode()
    (deployment["logs"] / "metrics_after_refusals.prom").write_text(scrape)
    assert re.search(r'mx_gateway_refusals_total\{client="small",reason="budget"\} 1', scrape)
    assert seen["no key"][0] == seen["unknown key"][0] == "UNAUTHENTICATED"
    assert seen["within budget"] == ("OK", "")
    assert seen["over budget"][0] == "RESOURCE_EXHAUSTED" and "budget" in seen["over budget"][1]
    assert seen["model not exposed"][0] == "NOT_FOUND"
    assert seen["bad input name"][0] == "INVALID_ARGUMENT"


@needs_gateway
def test_k8s_gateway_arguments_parse(tmp_path):
    """The gateway parses the Kubernetes command line (paths mapped; nothing is contacted)."""
    from common.cli import build_parser, config_from_args
    from serving.gateway.config import GatewayConfig

    shutil.copy(CONFIG / "policy.json", tmp_path / "policy.json")
    gw = _container(kustomize_build(), "Deployment", "gateway")
    args = map_command(gw["args"], {"/config": tmp_path}, {}, {})
    config = config_from_args(GatewayConfig, build_parser(GatewayConfig).parse_args(args))
    assert config.upstream == "tfserving:8500" and config.metrics_port == 9102
    assert config.state == "redis://redis:6379/0"


TRAIN_JOB = DEPLOY / "k8s" / "train-multiworker.yaml"


def train_job_errors(docs: list[dict]) -> list[str]:
    """What the schemas cannot see in the multi-worker training Job: TF_CONFIG (as each pod's
    shell builds it) listing exactly the Job's pods at the headless Service's port, the
    NetworkPolicy letting them reach each other, and the victim_export flags parsing."""
    import shlex

    from common.cli import parse_config
    from common.distribute import parse_tf_config
    from victim_export.config import VictimConfig

    errors = []
    job = _by_kind(docs, "Job")["train-victim"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    services = [s for s in _by_kind(docs, "Service").values()
                if s["metadata"]["name"] == pod.get("subdomain")]
    if not services or services[0]["spec"].get("clusterIP") != "None" \
            or not _matches(services[0]["spec"]["selector"], labels):
        return ["the pods' subdomain is no headless Service selecting them"]
    port = services[0]["spec"]["ports"][0]["port"]
    ctr = pod["containers"][0]
    if not _pinned(ctr["image"]):
        errors.append(f"image {ctr['image']!r} is not pinned")
    if port not in {p["containerPort"] for p in ctr.get("ports", [])}:
        errors.append(f"the container does not declare the collective port {port}")
    workers = spec["completions"]
    if spec.get("completionMode") != "Indexed" or spec.get("parallelism") != workers:
        errors.append("not an Indexed Job running all its completions at once")
    script = ctr["args"][0]
    export, _, command = script.partition("&&")
    expected = [f"{job['metadata']['name']}-{i}.{pod['subdomain']}:{port}" for i in range(workers)]
    for index in range(workers):
        out = subprocess.run(["sh", "-c", f'{export} && printf %s "$TF_CONFIG"'], text=True,
                             capture_output=True, env={"JOB_COMPLETION_INDEX": str(index)})
        try:
            spec_i = parse_tf_config(out.stdout)
        except ValueError as err:
            errors.append(f"pod {index}: {err}")
            continue
        if spec_i["cluster"] != {"worker": expected} or spec_i["task"]["index"] != index:
            errors.append(f"pod {index}: TF_CONFIG {out.stdout!r}, expected workers {expected}")
    allowed = [rule for p in _by_kind(docs, "NetworkPolicy").values()
               if _matches(p["spec"]["podSelector"].get("matchLabels"), labels)
               for rule in p["spec"].get("ingress", [])
               if port in {x.get("port") for x in rule.get("ports", [])}
               and any(_matches((src.get("podSelector") or {}).get("matchLabels") or {"_": 0},
                                labels) for src in rule.get("from", []))]
    if not allowed:
        errors.append(f"no NetworkPolicy lets the workers reach each other on {port}")
    argv = shlex.split(command)
    if argv[:4] != ["exec", "python", "-m", "victim_export"]:
        errors.append(f"not a victim_export command: {command!r}")
    else:
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": expected},
                                              "task": {"type": "worker", "index": 0}})
        try:
            config = parse_config(VictimConfig, argv[4:], prog="victim_export")
        finally:
            del os.environ["TF_CONFIG"]
        if config.distribute != "multiworker" or config.batch_size % workers:
            errors.append("not --distribute multiworker with a batch split over the workers")
    return errors


def test_k8s_multiworker_training_job_valid():
    docs = [d for d in yaml.safe_load_all(TRAIN_JOB.read_text()) if d]
    assert sorted(d["kind"] for d in docs) == ["Job", "NetworkPolicy", "PersistentVolumeClaim",
                                               "Service"]
    assert k8s_schema_errors(docs) == []
    assert train_job_errors(docs) == []
    assert "k8s/train-multiworker.yaml" not in kustomization()["resources"]


@pytest.mark.parametrize("old, new, fragment", [
    ("  completions: 2\n", "  completions: 3\n", "TF_CONFIG"),
    ("      subdomain: train-workers\n", "      subdomain: trainers\n", "headless Service"),
    ("          port: 12345\n---", "          port: 2222\n---", "reach each other"),
    ("--distribute multiworker", "--distribute mirrored", "--distribute multiworker"),
    ("image: mext-train:0.1.0-gpu", "image: mext-train:latest", "not pinned"),
])
def test_training_job_checks_catch_a_broken_file(old, new, fragment):
    text = TRAIN_JOB.read_text()
    assert old in text
    docs = [d for d in yaml.safe_load_all(text.replace(old, new)) if d]
    assert any(fragment in e for e in train_job_errors(docs))


def test_deploy_files_are_all_checked():
    """A new file in serving/deploy/ must be known here (and so checked by something above)."""
    known = {"__init__.py", "healthcheck.py", "protos.py", "Dockerfile.gateway",
             "Dockerfile.gateway.dockerignore", "kustomization.yaml", "k8s/train-multiworker.yaml",
             *COMPOSE_FILES,
             "config/models.config", "config/batching.config", "config/monitoring.config",
             "config/policy.json", "config/prometheus.yml"}
    known |= {r for r in kustomization()["resources"]}
    found = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    assert found == known

