"""The deployment files: docker-compose.yml, the Dockerfile, Prometheus, Grafana and Kubernetes.

Each check uses the real tool where one can be had here (docker-compose, promtool: Debian's
packages, installed by ``deploy/tools.sh``, which ``make test`` runs first; kubernetes-validate:
the ``dev`` extra). A tool that is missing fails its test, naming how to get it: never a skip.
No Docker engine runs here, so the image itself is not built; its Dockerfile is read instead.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "agentos-gateway.json"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30"
TOOL_TIMEOUT_S = 60

def _exported_metric_names() -> frozenset:
    """The sample names the gateway's collectors export (gateway/metrics.py), as a scrape shows
    them: counters with ``_total``, histograms by their base name."""
    from prometheus_client.metrics import MetricWrapperBase

    from gateway import metrics

    names = set()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return frozenset(names)


EXPORTED_METRICS = _exported_metric_names()


def tool(name: str) -> str:
    """The path of ``name``, or a loud failure saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `bash deploy/tools.sh` (or `make deploy-tools`), which installs it "
            f"from Debian's packages; `make test` runs it first",
            pytrace=False,
        )
    return path


def run_tool(args: List[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)


# -- docker-compose.yml ------------------------------------------------------------------------------


def compose() -> Dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_docker_compose_accepts_the_compose_file() -> None:
    result = run_tool([tool("docker-compose"), "-f", str(COMPOSE), "config", "-q"])
    assert result.returncode == 0, f"docker-compose config -q refused docker-compose.yml:\n{result.stderr}"


def test_docker_compose_refuses_a_broken_compose_file(tmp_path: Path) -> None:
    """The check above means something: the same tool refuses a wrong depends_on condition."""
    broken = COMPOSE.read_text().replace("condition: service_healthy", "condition: service_hopeful", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = run_tool([tool("docker-compose"), "-f", str(tmp_path / "docker-compose.yml"), "config", "-q"], cwd=tmp_path)
    assert result.returncode != 0, "docker-compose accepted a depends_on condition that does not exist"


def test_compose_services_and_what_they_wait_for() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "os-a", "os-b", "os-c", "postgres", "prometheus", "grafana"}
    assert services["gateway"]["depends_on"] == {
        name: {"condition": "service_healthy"} for name in ("os-a", "os-b", "os-c")
    }
    db_urls = set()
    for name in ("os-a", "os-b", "os-c"):
        service = services[name]
        command = service["command"]
        assert command[:3] == ["upstream", "--name", name]
        db_urls.add(command[command.index("--db") + 1])
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert "/health" in " ".join(service["healthcheck"]["test"])
    assert len(db_urls) == 1, f"the upstreams must share one database, so sessions survive a failover: {db_urls}"
    assert next(iter(db_urls)).startswith("postgresql+psycopg://") and "@postgres:5432/" in next(iter(db_urls))
    assert "healthcheck" in services["postgres"]
    for service in services.values():  # every mounted file or folder exists in the repository
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"docker-compose.yml mounts {source}, which does not exist"


def test_the_compose_gateway_config_names_the_upstream_services() -> None:
    from gateway.settings import load_settings

    settings = load_settings(DEPLOY / "gateway.compose.yaml")
    assert [(u.name, u.base_url) for u in settings.upstreams] == [
        (name, f"http://{name}:7777") for name in ("os-a", "os-b", "os-c")
    ]
    assert settings.local.agents == [] and settings.host == "0.0.0.0"
    mounts = compose()["services"]["gateway"]["volumes"]
    assert "./deploy/gateway.compose.yaml:/etc/agentos-gateway/gateway.yaml:ro" in mounts


# -- Prometheus --------------------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config() -> None:
    result = run_tool([tool("promtool"), "check", "config", str(DEPLOY / "prometheus.yml")])
    assert result.returncode == 0, f"promtool refused deploy/prometheus.yml:\n{result.stdout}{result.stderr}"
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    assert [(job["metrics_path"], job["static_configs"][0]["targets"]) for job in scrape] == [
        ("/metrics", ["gateway:9901"])
    ]


def test_prometheus_scrapes_the_gateways_admin_listener() -> None:
    """The compose gateway's admin listener is where Prometheus scrapes, published on the host's
    loopback only; the public port stays AgentOS's."""
    gateway = compose()["services"]["gateway"]
    command = gateway["command"]
    admin_port = command[command.index("--admin-port") + 1]
    (target,) = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target == f"gateway:{admin_port}" and admin_port != command[command.index("--port") + 1]
    assert gateway["ports"] == ["7777:7777", f"127.0.0.1:{admin_port}:{admin_port}"]


# -- Grafana -----------------------------------------------------------------------------------------

# What is not a metric name in an expression: PromQL's keywords and aggregation modifiers.
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                "group_left", "group_right", "inf", "nan", "atan2"}  # fmt: skip


def metric_names(expr: str) -> Set[str]:
    """The metric names an expression selects, histogram suffixes stripped (``x_bucket`` -> ``x``)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, is_call = match.group(1), match.group(2)
        if is_call or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(re.sub(r"_(bucket|sum|count)$", "", word))
    return names


def dashboard_expressions() -> Iterator[Tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, kind) (rate(agentos_gateway_request_duration_seconds_bucket'
        '{code=~"5..", route="/x"}[$__rate_interval]))) / on (kind) group_left sum(agentos_gatway_typo) '
        "or vector(0) and max_over_time(up[5m:1m] offset 1h)"
    )
    assert metric_names(expr) == {"agentos_gateway_request_duration_seconds", "agentos_gatway_typo", "up"}


def test_the_dashboard_uses_only_metrics_the_gateway_exports() -> None:
    used: Dict[str, Set[str]] = {}
    for title, expr in dashboard_expressions():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(title)
    unknown = {name: sorted(titles) for name, titles in used.items() if name not in EXPORTED_METRICS}
    assert not unknown, f"dashboard panels use metrics the gateway does not export: {unknown}"
    assert len(used) >= 10, f"the dashboard reads too few metrics: {sorted(used)}"


def test_the_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    for wanted in ("Request rate", "Error rate (5xx share)", "Request latency p50 / p99",
                   "Time to first byte p50 / p99", "Active streams", "Upstream health", "Ejections",
                   "Retries", "Runs by outcome"):  # fmt: skip
        assert wanted in titles
    exprs = " ".join(expr for _, expr in dashboard_expressions())
    for quantile in ("0.5", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, kind) (rate(agentos_gateway_time_to_first_byte" in exprs
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {source["uid"] for source in datasource["datasources"]}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, f"panel {panel['title']!r} uses an unprovisioned datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/agentos-gateway.yaml").read_text())
    grafana_mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in grafana_mounts


def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    """Each PromQL expression, as a recording rule (Grafana's $__rate_interval as 1m), through promtool."""
    rules = [
        {"record": f"dashboard:expr_{index}", "expr": expr.replace("$__rate_interval", "1m")}
        for index, (_, expr) in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, f"promtool refused a dashboard expression:\n{result.stdout}{result.stderr}"


# -- Kubernetes --------------------------------------------------------------------------------------


def k8s_documents() -> List[Tuple[str, Dict[str, Any]]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path.name, document))
    return documents


def k8s_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: it is in the dev extra (pip install -e '.[dev]')", pytrace=False
        )
    return kubernetes_validate


def by_kind(kind: str) -> Dict[str, Dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == kind}


def test_k8s_manifests_pass_the_kubernetes_schemas() -> None:
    validator = k8s_validate()
    documents = k8s_documents()
    assert {doc["kind"] for _, doc in documents} == {"ConfigMap", "Deployment", "Service"}
    failures = []
    for file_name, document in documents:
        try:
            validator.validate(document, K8S_VERSION, strict=True)
        except validator.ValidationError as error:
            failures.append(f"{file_name}: {document['kind']}/{document['metadata']['name']}: {error.message}")
    assert not failures, "\n".join(failures)


def test_the_k8s_schema_check_refuses_a_misspelled_field() -> None:
    validator = k8s_validate()
    deployment = json.loads(json.dumps(by_kind("Deployment")["agentos-gateway"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(validator.ValidationError):
        validator.validate(deployment, K8S_VERSION, strict=True)


def test_k8s_pods_run_non_root_read_only_with_probes_and_resources() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == {"agentos-gateway", "agentos-upstream"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert set(container["resources"]) == {"requests", "limits"}, name
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, name
            assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
            assert {mount["mountPath"] for mount in container["volumeMounts"]} >= {"/tmp"}, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    gateway = deployments["agentos-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    upstream = deployments["agentos-upstream"]["spec"]["template"]["spec"]["containers"][0]
    assert upstream["args"][:2] == ["upstream", "--name"] and "--db" in upstream["args"]


def test_k8s_prometheus_scrapes_the_named_admin_port_and_the_service_leaves_it_out() -> None:
    from gateway.settings import Settings

    pod = by_kind("Deployment")["agentos-gateway"]["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    ports = {port["name"]: port["containerPort"] for port in pod["spec"]["containers"][0]["ports"]}
    config = Settings(**yaml.safe_load(by_kind("ConfigMap")["agentos-gateway"]["data"]["gateway.yaml"]))
    assert ports == {"http": config.port, "admin": config.admin.port}
    assert annotations == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(ports["admin"]), "prometheus.io/path": "/metrics"
    }  # fmt: skip
    service_ports = [port["targetPort"] for port in by_kind("Service")["agentos-gateway"]["spec"]["ports"]]
    assert service_ports == ["http"], "clients reach the public port only"


def test_k8s_gateway_discovers_the_upstreams_through_the_headless_service() -> None:
    services = by_kind("Service")
    headless = services["agentos-upstreams"]
    assert headless["spec"]["clusterIP"] == "None"
    upstream_pods = by_kind("Deployment")["agentos-upstream"]["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= upstream_pods.items()
    gateway_pods = by_kind("Deployment")["agentos-gateway"]["spec"]["template"]["metadata"]["labels"]
    assert services["agentos-gateway"]["spec"]["selector"].items() <= gateway_pods.items()

    config = yaml.safe_load(by_kind("ConfigMap")["agentos-gateway"]["data"]["gateway.yaml"])
    (entry,) = config["upstreams"]
    namespace = headless["metadata"]["namespace"]
    port = headless["spec"]["ports"][0]["port"]
    assert entry == {
        "name": "agentos",
        "dns": f"agentos-upstreams.{namespace}.svc.cluster.local:{port}",
        "dns_refresh_s": 10,
    }
    args = by_kind("Deployment")["agentos-gateway"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--config") + 1] == "/etc/agentos-gateway/gateway.yaml"
    from gateway.settings import Settings

    (upstream,) = Settings(**config).upstreams  # the gateway itself accepts it
    assert upstream.dns == entry["dns"] and upstream.url is None


# -- Dockerfile --------------------------------------------------------------------------------------


def dockerfile_instructions() -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    instructions: List[Tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages() -> List[List[Tuple[str, str]]]:
    result: List[List[Tuple[str, str]]] = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            result.append([])
        assert result, f"{keyword} before the first FROM"
        result[-1].append((keyword, arguments))
    return result


def test_dockerfile_builds_in_one_stage_and_runs_slim_as_non_root() -> None:
    builder, final = stages()
    assert builder[0] == ("FROM", "python:3.11-slim AS builder")
    assert final[0] == ("FROM", "python:3.11-slim")
    assert any(k == "RUN" and 'pip install ".[postgres]"' in a for k, a in builder), "the postgres extra"
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    for keyword, arguments in builder:  # what the builder copies is in the build context
        if keyword == "COPY":
            for source in shlex.split(arguments)[:-1]:
                assert (ROOT / source).exists(), source
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert any(k == "RUN" and f"--uid {uid}" in a for k, a in final), "the USER is created in the final stage"


def test_dockerfile_health_check_entrypoint_and_command() -> None:
    final = stages()[-1]
    (healthcheck,) = [a for k, a in final if k == "HEALTHCHECK"]
    assert "urllib.request" in healthcheck and "/health" in healthcheck and "curl" not in healthcheck
    (entrypoint,) = [a for k, a in final if k == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(entrypoint) == ["agentos-gateway"] and "agentos-gateway" in scripts
    (command,) = [a for k, a in final if k == "CMD"]
    assert json.loads(command) == ["serve", "--host", "0.0.0.0", "--config", "/etc/agentos-gateway/gateway.yaml"]
    assert ("EXPOSE", "7777 9901") in final  # the public port, the admin listener


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines())
    ignored = {line for line in lines if line and not line.startswith("#")}
    assert {".git", ".venv", "tests", "**/__pycache__"} <= ignored
    assert not {"gateway", "pyproject.toml", "README.md"} & ignored, "the builder copies these"


def test_the_postgres_extra_brings_the_driver_agno_uses() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("psycopg[binary]") for requirement in extras["postgres"])
    assert any(requirement.startswith("sqlalchemy") for requirement in extras["postgres"])
    assert any(requirement.startswith("kubernetes-validate") for requirement in extras["dev"])
