"""Deploy files: the Kubernetes manifests, docker-compose.yml and the nginx load balancer.

- every manifest in deploy/k8s validates, strictly (unknown fields fail), against the
  schemas of pinned Kubernetes versions that kubernetes-validate ships offline, and holds
  the rollout contract (probes, drain, preStop, rolling update, PDB, HPA, no stickiness);
- docker-compose.yml validates against the Compose Specification schema vendored in
  check-jsonschema (always), and with `docker compose config` or Debian's `docker-compose`
  (1.29) when one is installed;
- deploy/nginx.conf is SSE-safe; with Debian's nginx installed it passes `nginx -t`, and a
  real nginx running it streams an event before the upstream response ends, retries a GET
  that a draining replica refused with 503 and never retries a POST.

Nothing here needs Redis or a network: fake upstreams and nginx listen on loopback ports.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# The oldest Kubernetes the manifests support and a recent one, both shipped offline by
# kubernetes-validate (pinned in pyproject's test extra).
K8S_VERSIONS = ("1.30.0", "1.35.0")
# Secret keys documented as upcoming, not yet settings.
UPCOMING_KEYS = {"GATEWAY_JWT_SECRET"}
NON_ROOT_UID = 10001


# --- helpers ---------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in deploy/k8s by (kind, name)."""
    out = {}
    for path in manifest_files():
        for doc in load_docs(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def obj(kind: str, name: str) -> dict[str, Any]:
    return objects()[(kind, name)]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def seconds(value: str) -> float:
    """An nginx or Compose duration (``1h``, ``90s``, ``20s``, ``3600``) in seconds."""
    total, unit_s = 0.0, {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|)", value.strip()):
        total += float(number) * unit_s[unit]
    return total


def config_map() -> dict[str, str]:
    return obj("ConfigMap", "gateway-config")["data"]  # type: ignore[no-any-return]


def drain_timeout() -> float:
    return float(config_map().get("GATEWAY_DRAIN_TIMEOUT", Settings().drain_timeout))


# --- Kubernetes ------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == [p.name for p in manifest_files()]
    namespaces = {
        d["metadata"].get("namespace") for d in objects().values() if d["kind"] != "Namespace"
    }
    assert namespaces == {kust["namespace"]}
    images = {i["name"] for i in kust["images"]}
    for name in ("gateway", "worker"):
        assert container(obj("Deployment", name))["image"].split(":")[0] in images


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    docs = load_docs(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(
                f"{path.name} {doc['kind']}/{doc['metadata']['name']} @ {where}: {e.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{path.name}: {e.message}")


def test_strict_validation_rejects_unknown_fields() -> None:
    """Guard: the strict schemas do reject a misspelt field (so the test above means something)."""
    deployment = load_docs(K8S / "gateway-deployment.yaml")[0]
    container(deployment)["readinessProbes"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_gateway_deployment_rollout_contract() -> None:
    dep = obj("Deployment", "gateway")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    c = container(dep)
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert c["command"] == ["gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert port == 8000
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", port)
    # preStop sleep first (endpoints removed before SIGTERM), then the drain: the grace period
    # must cover both, or SIGKILL cuts the drain short.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = float(pre_stop[1])
    assert 2 <= sleep_s <= 15
    assert pod["terminationGracePeriodSeconds"] > sleep_s + drain_timeout()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    refs = {next(iter(e.values()))["name"] for e in c["envFrom"]}
    assert refs == {"gateway-config", "gateway-secrets"}
    assert pod["enableServiceLinks"] is False  # GATEWAY_* variables of a Service named gateway


@pytest.mark.parametrize("name", ["gateway", "worker"])
def test_pods_run_non_root_on_a_read_only_filesystem(name: str) -> None:
    dep = obj("Deployment", name)
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == NON_ROOT_UID
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    tmp = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}["/tmp"]
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[tmp]


def test_dockerfile_user_matches_the_manifests() -> None:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] == str(NON_ROOT_UID)


def test_worker_deployment() -> None:
    dep = obj("Deployment", "worker")
    assert container(dep)["command"] == ["gateway", "worker"]
    assert dep["spec"]["replicas"] >= 1
    assert container(dep)["image"] == container(obj("Deployment", "gateway"))["image"]


def test_config_map_and_secret_keys_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GATEWAY_* key is a real setting (a typo would be silently ignored) and parses."""
    secret = obj("Secret", "gateway-secrets")["stringData"]
    assert "REDIS_URL" in secret and set(secret) >= UPCOMING_KEYS
    env = {**config_map(), **secret}
    fields = set(Settings.model_fields)
    for key, value in env.items():
        assert isinstance(value, str), f"{key}: ConfigMap and Secret values must be strings"
        if key == "REDIS_URL" or key in UPCOMING_KEYS:
            continue
        assert key.startswith("GATEWAY_"), key
        assert key.removeprefix("GATEWAY_").lower() in fields, f"{key} is not a setting"
    for key, value in env.items():
        if key not in UPCOMING_KEYS:  # placeholders, not meant to be valid values
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.redis_url == secret["REDIS_URL"]
    assert settings.drain_timeout == drain_timeout()


def test_service_hpa_pdb_select_the_gateway_pods() -> None:
    pod_labels = obj("Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return all(pod_labels.get(k) == v for k, v in selector.items())

    svc = obj("Service", "gateway")["spec"]
    assert selects(svc["selector"])
    assert svc.get("sessionAffinity", "None") == "None"  # no sticky sessions
    assert {p["targetPort"] for p in svc["ports"]} == {"http"}

    hpa = obj("HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"

    pdb = obj("PodDisruptionBudget", "gateway")
    assert pdb["apiVersion"] == "policy/v1"
    assert selects(pdb["spec"]["selector"]["matchLabels"])
    if "maxUnavailable" in pdb["spec"]:
        assert pdb["spec"]["maxUnavailable"] == 1
    else:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_ingress_is_sse_safe_and_not_sticky() -> None:
    ing = obj("Ingress", "gateway")
    notes = ing["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "proxy-buffering"] == "off"
    assert int(notes[prefix + "proxy-read-timeout"]) >= 300
    assert int(notes[prefix + "proxy-send-timeout"]) >= 300
    assert "http_503" in notes[prefix + "proxy-next-upstream"]
    assert "non_idempotent" not in notes[prefix + "proxy-next-upstream"]
    assert not any(k.startswith(prefix + "affinity") or "session-cookie" in k for k in notes)
    assert notes.get(prefix + "upstream-hash-by") is None
    assert ing["spec"]["ingressClassName"] == "nginx"
    (rule,) = ing["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "gateway", "port": {"name": "http"}}


def test_no_sticky_sessions_anywhere() -> None:
    files = [*K8S.glob("*.yaml"), COMPOSE, NGINX_CONF]
    for path in files:
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )
        for pattern in (
            r"\bip_hash\b",
            r"\bsticky\b",
            r"ClientIP",
            r"\bhash\s+\$",
            r"session-cookie",
        ):
            assert not re.search(pattern, text), f"{path.name}: {pattern}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_object() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d}
    assert rendered == set(objects())


# --- docker-compose.yml ----------------------------------------------------------------------


COMPOSE_SCHEMA = ("--builtin-schema", "vendor.compose-spec")


def test_compose_matches_the_compose_specification_schema() -> None:
    """Offline: the Compose Specification schema vendored in check-jsonschema."""
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *COMPOSE_SCHEMA, str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def compose_cli() -> list[str] | None:
    """``docker compose`` (v2 plugin) if it works, else Debian's ``docker-compose`` (1.29)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_with_the_compose_cli() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed (Debian package "
            "docker-compose); the Compose Specification schema test still ran"
        )
    out = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, f"{' '.join(cli)} config: {out.stdout}{out.stderr}"


def test_compose_stack() -> None:
    """Redis with AOF and noeviction, 3 gateways, 2 workers, nginx with deploy/nginx.conf."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd
    assert "--appendfsync everysec" in redis_cmd
    assert "--maxmemory-policy noeviction" in redis_cmd
    assert "healthcheck" in services["redis"]

    gateways = sorted(n for n in services if n.startswith("gateway-"))
    workers = sorted(n for n in services if n.startswith("worker-"))
    assert gateways == ["gateway-1", "gateway-2", "gateway-3"]
    assert len(workers) == 2
    for name in gateways:
        svc = services[name]
        # A local stack: gateway serve on 0.0.0.0:8000 without token checks (said in a comment).
        assert svc["command"][:2] == ["gateway", "serve"] and "--insecure" in svc["command"]
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        # docker stops with SIGTERM, then SIGKILL after the grace period (10 s by default).
        assert seconds(svc["stop_grace_period"]) > drain_timeout()
    for name in workers:
        assert services[name]["command"] == ["gateway", "worker"]
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"

    lb = services["lb"]
    (volume,) = lb["volumes"]
    source, target = volume.split(":")[:2]
    assert (ROOT / source).resolve() == NGINX_CONF  # mounted, not a copy
    assert target == "/etc/nginx/nginx.conf"
    assert "healthcheck" in lb
    assert {n: d["condition"] for n, d in lb["depends_on"].items()} == dict.fromkeys(
        gateways, "service_healthy"
    )
    listen = re.search(r"listen\s+(\d+)\s*;", NGINX_CONF.read_text())
    assert listen is not None
    assert any(p.split(":")[-1] == listen.group(1) for p in lb["ports"])


# --- nginx -----------------------------------------------------------------------------------


def directives(name: str) -> list[str]:
    """The arguments of every ``name …;`` directive in deploy/nginx.conf, comments removed."""
    text = "\n".join(line.split("#", 1)[0] for line in NGINX_CONF.read_text().splitlines())
    found = re.findall(rf"(?:^|[;{{}}\s]){name}(?:\s+([^;{{}}]*))?;", text)
    return [m.strip() for m in found]


def test_nginx_conf_is_sse_safe() -> None:
    assert directives("proxy_buffering") == ["off"]
    assert directives("proxy_http_version") == ["1.1"]
    assert 'Connection ""' in directives("proxy_set_header")
    (read_timeout,) = directives("proxy_read_timeout")
    # Far above the heartbeat: an idle stream must never be cut by the proxy.
    assert seconds(read_timeout) >= max(300, 10 * Settings().heartbeat_interval)
    (next_upstream,) = directives("proxy_next_upstream")
    assert "http_503" in next_upstream.split()
    assert "non_idempotent" not in next_upstream  # a POST is never repeated
    for sticky in ("ip_hash", "hash", "sticky"):  # round robin, the default
        assert directives(sticky) == [], sticky
    servers = directives("server")
    assert sorted(s.split()[0] for s in servers) == [f"gateway-{i}:8000" for i in (1, 2, 3)]


needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (Debian package nginx)",
)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_conf(tmp: Path, listen: int, upstreams: list[int]) -> Path:
    """deploy/nginx.conf with only its addresses changed: loopback upstreams and listen port
    (nginx resolves upstream host names at load time), plus temp and log paths under ``tmp``
    so it also runs without root."""
    text = NGINX_CONF.read_text()
    for i, port in enumerate(upstreams, start=1):
        text, n = re.subn(rf"\bserver\s+gateway-{i}:8000\b", f"server 127.0.0.1:{port}", text)
        assert n == 1
    text, n = re.subn(r"\blisten\s+8080\s*;", f"listen 127.0.0.1:{listen};", text)
    assert n == 1
    paths = "".join(
        f"    {d}_temp_path {tmp / d};\n"
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", f"http {{\n{paths}    access_log {tmp / 'access.log'};\n", 1)
    conf = tmp / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_args(tmp: Path, conf: Path) -> list[str]:
    return [nginx_binary(), "-p", f"{tmp}/", "-c", str(conf), "-e", str(tmp / "error.log")]


@needs_nginx
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    conf = local_conf(tmp_path, free_port(), [free_port() for _ in range(3)])
    out = subprocess.run(
        [*nginx_args(tmp_path, conf), "-t", "-g", f"pid {tmp_path / 'nginx.pid'};"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


@dataclass
class Upstream:
    """A fake gateway replica: ``/sse`` streams one event, waits for ``release``, sends a
    second and ends; any other request gets ``status`` (503 = a draining replica)."""

    status: int = 200
    release: threading.Event = field(default_factory=threading.Event)
    hits: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])


def start_upstream(up: Upstream) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            up.hits.append(self.command)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path == "/sse":
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()  # HTTP/1.0, no length: the body ends when we close
                self.wfile.write(b"retry: 2000\nid: 1\ndata: one\n\n")
                self.wfile.flush()
                up.release.wait(10)
                self.wfile.write(b"id: 2\ndata: two\n\n")
                return
            body = json.dumps({"status": up.status}).encode()
            self.send_response(up.status)
            if up.status == 503:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = _answer
        do_POST = _answer

    up.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    up.server.daemon_threads = True
    threading.Thread(target=up.server.serve_forever, daemon=True).start()


@pytest.fixture
def run_nginx(tmp_path: Path) -> Iterator[Callable[[list[Upstream]], int]]:
    """Starts deploy/nginx.conf in front of three fake upstreams; returns its port."""
    procs: list[subprocess.Popen[bytes]] = []
    ups: list[Upstream] = []

    def start(upstreams: list[Upstream]) -> int:
        for up in upstreams:
            start_upstream(up)
            ups.append(up)
        run_dir = tmp_path / f"nginx-{len(procs)}"
        run_dir.mkdir()
        port = free_port()
        conf = local_conf(run_dir, port, [u.port for u in upstreams])
        pid = f"daemon off; pid {run_dir / 'nginx.pid'};"
        procs.append(subprocess.Popen([*nginx_args(run_dir, conf), "-g", pid]))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                if time.monotonic() > deadline or procs[-1].poll() is not None:
                    log = (
                        (run_dir / "error.log").read_text()
                        if (run_dir / "error.log").exists()
                        else ""
                    )
                    raise RuntimeError(f"nginx did not start: {log}") from None
                time.sleep(0.05)

    yield start
    for up in ups:
        up.release.set()
        assert up.server is not None
        up.server.shutdown()
        up.server.server_close()
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@needs_nginx
def test_nginx_flushes_each_event_without_buffering(
    run_nginx: Callable[[list[Upstream]], int],
) -> None:
    """The first event reaches the client while the upstream still holds the response open
    (the fake upstream sends no X-Accel-Buffering header: this is the config's doing)."""
    ups = [Upstream(), Upstream(), Upstream()]
    port = run_nginx(ups)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/sse", headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "text/event-stream"
        lines = []
        while not lines or lines[-1] != b"data: one\n":
            lines.append(resp.readline())  # times out if nginx buffers the event
        assert not any(u.release.is_set() for u in ups)
        for up in ups:
            up.release.set()
        rest = resp.read()
        assert b"data: two" in rest
    finally:
        conn.close()


def request(port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@needs_nginx
def test_nginx_retries_a_get_refused_by_a_draining_replica(
    run_nginx: Callable[[list[Upstream]], int],
) -> None:
    draining = [Upstream(status=503) for _ in range(2)]
    ready = Upstream(status=200)
    port = run_nginx([*draining, ready])
    for _ in range(3):
        assert request(port, "GET", "/v1/sessions") == 200
    assert ready.hits.count("GET") == 3


@needs_nginx
def test_nginx_never_retries_a_post(run_nginx: Callable[[list[Upstream]], int]) -> None:
    ups = [Upstream(status=503) for _ in range(3)]
    port = run_nginx(ups)
    assert request(port, "POST", "/v1/sessions/s1/events") == 503
    assert sum(len(u.hits) for u in ups) == 1  # not repeated on another replica


@needs_nginx
def test_nginx_gives_up_after_three_tries(run_nginx: Callable[[list[Upstream]], int]) -> None:
    ups = [Upstream(status=503) for _ in range(3)]
    port = run_nginx(ups)
    assert request(port, "GET", "/v1/sessions") == 503
    assert [len(u.hits) for u in ups] == [1, 1, 1]
