"""infra/: the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, offline),
their numbers against each other and the server's settings, the Dockerfile's shape, the Grafana
dashboard against the metrics the server exports, and (slow) the image's install steps."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from ivr import metrics
from ivr.config import Settings
from ivr.drain import GOODBYE_GRACE_SECONDS

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
#: The oldest Kubernetes still commonly run, and the newest schemas the validator carries.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def resource(kind: str, path: str = "") -> dict:
    # Without a path: the ivr manifests at the top (redis/ and custom-metrics/ have their own).
    found = [d for p, d in manifests()
             if d["kind"] == kind and (p.relative_to(K8S).as_posix() == path if path else p.parent == K8S)]
    assert len(found) == 1, (kind, path, len(found))
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    docs = manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_validator_rejects_a_broken_manifest():
    bad = resource("Deployment")
    bad = json.loads(json.dumps(bad))
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "long"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def test_grace_period_covers_pre_stop_drain_and_goodbye():
    pod = resource("Deployment")["spec"]["template"]["spec"]
    config = resource("ConfigMap")["data"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    from ivr.commands.serve import SHUTDOWN_SECONDS

    needed = float(pre_stop[1]) + float(config["IVR_DRAIN_SECONDS"]) + GOODBYE_GRACE_SECONDS + SHUTDOWN_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_settings_in_the_config_map_are_real_settings():
    config = resource("ConfigMap")["data"]
    known = {var for var, _ in Settings.env_help().values()}
    assert set(config) <= known, set(config) - known
    Settings.from_env(config)  # and valid


def test_probes_ports_and_scaling_fit_together():
    deployment = resource("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert {"name": "ivr-secrets"} in [e.get("secretRef") for e in container["envFrom"]]
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])
    service = resource("Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    ingress = resource("Ingress")
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == service["metadata"]["name"]
    public = resource("ConfigMap")["data"]["IVR_PUBLIC_URL"]
    assert public == "https://" + ingress["spec"]["rules"][0]["host"]
    calls_hpa = resource("HorizontalPodAutoscaler", "custom-metrics/hpa.yaml")
    pods_metric = next(m["pods"] for m in calls_hpa["spec"]["metrics"] if m["type"] == "Pods")
    assert pods_metric["metric"]["name"] == metrics.ACTIVE_CALLS._name
    assert float(pods_metric["target"]["averageValue"]) < int(resource("ConfigMap")["data"]["IVR_MAX_CALLS"])
    cpu_hpa = resource("HorizontalPodAutoscaler", "hpa.yaml")
    assert cpu_hpa["metadata"]["name"] == calls_hpa["metadata"]["name"]  # one replaces the other


def test_adapter_rule_serves_the_metric_the_hpa_asks_for():
    values = yaml.safe_load((INFRA / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    rule = values["rules"]["custom"][0]
    assert rule["name"]["as"] == metrics.ACTIVE_CALLS._name
    assert rule["seriesQuery"].startswith(metrics.ACTIVE_CALLS._name + "{")


def test_dashboard_queries_only_metrics_the_server_exports():
    from prometheus_client import REGISTRY

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {f.name + sfx for f in REGISTRY.collect() for sfx in suffixes.get(f.type, ("",))}
    dashboard = json.loads((INFRA / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    used = {name for expr in exprs for name in re.findall(r"\b(ivr_[a-z_]+)", expr)}
    assert used and used <= exported, used - exported
    for required in ("ivr_response_latency_seconds_bucket", "ivr_barge_in_latency_seconds_bucket",
                     "ivr_provider_first_result_seconds_bucket", "ivr_active_calls"):
        assert required in used


def test_dockerfile_is_multi_stage_non_root_with_a_health_check():
    text = (INFRA / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in re.sub(r"\\\n", " ", text).splitlines() if line and not line.startswith("#")]
    stages = [rest for op, rest in instructions if op == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    user = [rest for op, rest in final if op == "USER"]
    assert user and user[-1].strip() not in ("0", "root")
    assert any(op == "HEALTHCHECK" and "/healthz" in rest for op, rest in final)
    assert any(op == "CMD" and '"ivr", "serve"' in rest for op, rest in final)
    assert not any(op == "ENV" and re.search(r"TOKEN|SECRET|API_KEY", rest) for op, rest in instructions)
    for op, rest in instructions:
        if op == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :] and "!ivr/" in ignore  # only what the build copies


@pytest.mark.slow
def test_image_install_steps_work_in_a_clean_venv(tmp_path):
    """What the Dockerfile's build stage runs (infra/install.sh), on a copy of the sources."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ivr", src / "ivr", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    out = subprocess.run(["sh", str(INFRA / "install.sh"), str(venv), str(src)], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ivr: embedded engines load" in out.stdout
    help_text = subprocess.run([str(venv / "bin" / "ivr"), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    assert "IVR_DRAIN_SECONDS" in help_text
    assert sys.executable not in help_text


def test_the_pods_share_the_redis_the_manifests_run():
    url = resource("ConfigMap")["data"]["IVR_REDIS_URL"]
    service = resource("Service", "redis/redis.yaml")
    redis = resource("Deployment", "redis/redis.yaml")
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    assert host.split(".")[:2] == [service["metadata"]["name"], service["metadata"]["namespace"]]
    assert int(port) == service["spec"]["ports"][0]["port"]
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--save") + 1] == ""  # nothing on disk: every key expires
    # Only the ivr pods reach it.
    policy = resource("NetworkPolicy", "redis/redis.yaml")
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed == resource("Deployment")["spec"]["template"]["metadata"]["labels"]
