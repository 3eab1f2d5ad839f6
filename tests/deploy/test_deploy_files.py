"""deploy/: every file is checked against what vecq really accepts.

YAML parses; Kubernetes objects validate against the Kubernetes JSON schemas shipped offline by
`kubernetes-validate` (KEDA's CRDs have no schema there, so they are checked structurally); every
`vecq` command and flag is one the CLI accepts (its `--help`); every `VECQ_*` variable is a
WorkerSettings / ProducerSettings field and its value passes WorkerSettings' validation (the
gateway's: a GatewaySettings field passing GatewaySettings'); KEDA's list names are the queue keys
vecq computes; every probe and health-check path is a route the gateway app serves, and the
gateway's readiness probe is run against a stub server that checks the key as the gateway does.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from vecq.producer.contract import DEFAULT_MODEL
from vecq.producer.gateway import GatewaySettings, create_app
from vecq.producer.gateway.guard import LIVENESS_PATH, ApiKeys, read_key_file
from vecq.producer.keys import queue_keys
from vecq.producer.settings import ProducerSettings
from vecq.worker.cli import main
from vecq.worker.settings import WorkerSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
GATEWAY_DOCKERFILE = DEPLOY / "Dockerfile.gateway"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
UNIT = DEPLOY / "systemd" / "vecq-worker@.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "worker.env.example"

YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))


# --- readers -----------------------------------------------------------------------------------
def load_yaml(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml(path)]


def k8s_one(kind: str, name: str | None = None) -> dict:
    (obj,) = [o for o in k8s_objects() if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return obj


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with `\\` continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def unit_entries(path: Path = UNIT) -> list[tuple[str, str]]:
    """(key, value) of a systemd unit, repeated keys kept (Environment= may appear many times)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def env_file(path: Path) -> dict[str, str]:
    return dict(kv for kv in unit_entries(path))


def compose() -> dict:
    (doc,) = load_yaml(COMPOSE)
    return doc


def compose_workers() -> dict[str, dict]:
    return {name: svc for name, svc in compose()["services"].items() if name.startswith("worker")}


def containers() -> list[dict]:
    deployments = [o for o in k8s_objects() if o["kind"] == "Deployment"]
    return [c for d in deployments for c in d["spec"]["template"]["spec"]["containers"]]


def container(name: str) -> dict:
    (c,) = [c for c in containers() if c["name"] == name]
    return c


def env_values(c: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


# --- commands ----------------------------------------------------------------------------------
def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command line in deploy/ that may run vecq."""
    found: list[tuple[str, list[str]]] = []
    for path in (DOCKERFILE, GATEWAY_DOCKERFILE):
        for word, rest in dockerfile_instructions(path):
            if word in ("ENTRYPOINT", "CMD") and rest.startswith("["):
                found.append((f"{path.name} {word}", json.loads(rest)))
            elif word == "HEALTHCHECK":
                found.append((f"{path.name} HEALTHCHECK", healthcheck_argv(rest)))
            elif word == "RUN":
                found.append((f"{path.name} RUN", shlex.split(rest.replace(";", " ; "))))
    for name, svc in compose()["services"].items():
        for key in ("entrypoint", "command"):
            if key in svc:
                found.append((f"compose {name}.{key}", _argv(svc[key])))
        if "healthcheck" in svc:
            found.append((f"compose {name}.healthcheck", _argv(svc["healthcheck"]["test"])))
    for c in containers():
        found.append((f"k8s {c['name']}", c.get("command", []) + c.get("args", [])))
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if "exec" in c.get(probe, {}):
                found.append((f"k8s {c['name']}.{probe}", c[probe]["exec"]["command"]))
    found += [("systemd ExecStart", shlex.split(v)) for k, v in unit_entries() if k == "ExecStart"]
    return found


def docker_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ENV":
            env.update(dict(tok.split("=", 1) for tok in shlex.split(rest)))
    return env


def gateway_healthcheck() -> list[str]:
    (rest,) = [r for w, r in dockerfile_instructions(GATEWAY_DOCKERFILE) if w == "HEALTHCHECK"]
    return healthcheck_argv(rest)


def healthcheck_argv(rest: str) -> list[str]:
    cmd = re.split(r"(?:^|\s)CMD\s+", rest, maxsplit=1)[1].strip()
    return json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)


def _argv(value: str | list[str]) -> list[str]:
    argv = shlex.split(value) if isinstance(value, str) else list(value)
    return argv[1:] if argv and argv[0] in ("CMD", "CMD-SHELL") else argv


def vecq_invocations() -> list[tuple[str, str, list[str]]]:
    """(where, verb, flags) for each `vecq VERB ...` inside the command lines."""
    out = []
    for where, argv in commands():
        for i, tok in enumerate(argv):
            # Only in command position (`useradd ... vecq` names the user, not the program).
            at_start = i == 0 or argv[i - 1] in ("&&", ";", "||", "then", "else", "exec")
            if Path(tok).name == "vecq" and at_start and i + 1 < len(argv):
                tail = []
                for t in argv[i + 2 :]:
                    if t in ("&&", ";", "||", "|"):
                        break
                    tail.append(t)
                out.append((where, argv[i + 1], [t.split("=")[0] for t in tail if t.startswith("--")]))
    return out


@cache
def cli_flags(verb: str) -> frozenset[str]:
    result = CliRunner().invoke(main, [verb, "--help"])
    assert result.exit_code == 0, result.output
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.output))


def test_every_vecq_command_and_flag_is_accepted_by_the_cli() -> None:
    invocations = vecq_invocations()
    # Not vacuous: the worker entrypoint, its health checks and the gateway (image entrypoint,
    # k8s command) are seen.
    assert {"worker", "health", "gateway"} <= {verb for _, verb, _ in invocations}
    for where, verb, flags in invocations:
        assert verb in main.list_commands(click.Context(main)), (
            f"{where}: `vecq {verb}` is not a vecq command"
        )
        unknown = set(flags) - cli_flags(verb)
        assert not unknown, f"{where}: `vecq {verb}` has no flag(s) {sorted(unknown)}"


def test_entrypoints_run_the_worker_with_env_only() -> None:
    (entry,) = [rest for word, rest in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert json.loads(entry) == ["vecq", "worker"]
    assert [rest for word, rest in dockerfile_instructions() if word == "USER"] == ["vecq"]  # non-root
    c = container("worker")
    assert c["command"] == ["vecq", "worker"] and not c.get("args")
    assert [v for k, v in unit_entries() if k == "ExecStart"] == ["/opt/vecq/bin/vecq worker"]


def test_gateway_image_and_pod_run_the_gateway_with_env_only() -> None:
    steps = dockerfile_instructions(GATEWAY_DOCKERFILE)
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    (base,) = [rest for word, rest in steps if word == "FROM"]
    assert re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base) == "python:3.12-slim"
    (entry,) = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert json.loads(entry) == ["vecq", "gateway"]
    assert [rest for word, rest in steps if word == "USER"] == ["vecq"]  # non-root
    # The gateway extra, and it pulls no torch.
    (install,) = [rest for word, rest in steps if word == "RUN" and "pip install" in rest]
    assert install == 'pip install ".[gateway]"'
    extras = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for d in extras["gateway"] if re.match(r"torch\b", d)]
    env = docker_env(GATEWAY_DOCKERFILE)
    assert env["VECQ_HOST"] == "0.0.0.0"
    assert [rest for word, rest in steps if word == "EXPOSE"] == [env["VECQ_PORT"]]
    c = container("gateway")
    assert c["command"] == ["vecq", "gateway"] and not c.get("args")


# --- VECQ_* environment ------------------------------------------------------------------------
def env_sources() -> dict[str, dict[str, str]]:
    """Every place that sets VECQ_* variables: {where: {NAME: value}} (value '' when from a secret)."""
    sources: dict[str, dict[str, str]] = {}
    sources["Dockerfile ENV"] = docker_env(DOCKERFILE)
    for name, svc in compose()["services"].items():
        sources[f"compose {name}"] = {k: str(v) for k, v in svc.get("environment", {}).items()}
    sources["Dockerfile.gateway ENV"] = docker_env(GATEWAY_DOCKERFILE)
    for c in containers():
        sources[f"k8s {c['name']}"] = {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}
    for secret in (o for o in k8s_objects() if o["kind"] == "Secret"):
        sources[f"k8s Secret {secret['metadata']['name']}"] = dict(secret["stringData"])
    sources["systemd unit"] = dict(v.split("=", 1) for k, v in unit_entries() if k == "Environment")
    sources["worker.env.example"] = env_file(ENV_EXAMPLE)
    return {where: {k: v for k, v in env.items() if k.startswith("VECQ_")} for where, env in sources.items()}


WORKER_FIELDS = set(WorkerSettings.model_fields)
GATEWAY_FIELDS = set(GatewaySettings.model_fields)
#: VECQ_CACHE_DIR: where the engines cache the bundles they build (engines/cache.py), no setting.
KNOWN_ENV = {"VECQ_" + f.upper() for f in WORKER_FIELDS | set(ProducerSettings.model_fields)}
KNOWN_ENV.add("VECQ_CACHE_DIR")
GATEWAY_ENV = {"VECQ_" + f.upper() for f in GATEWAY_FIELDS}
#: Where the gateway's settings are set: checked against GatewaySettings, not WorkerSettings
#: (GatewaySettings ignores unknown names, so the name check here is what catches a typo).
GATEWAY_SOURCES = {"Dockerfile.gateway ENV", "compose gateway", "k8s gateway"}


@pytest.mark.parametrize("where", list(env_sources()))
def test_vecq_env_vars_are_settings_with_valid_values(where: str) -> None:
    env = env_sources()[where]
    gateway = where in GATEWAY_SOURCES
    unknown = set(env) - (GATEWAY_ENV if gateway else KNOWN_ENV)
    assert not unknown, f"{where}: {sorted(unknown)} are no vecq {'gateway ' if gateway else ''}setting"
    # Literal values (not `${...}` interpolations or secret refs) must pass the settings' checks;
    # systemd's %i is an instance number.
    fields = GATEWAY_FIELDS if gateway else WORKER_FIELDS
    given = {
        k[5:].lower(): v.replace("%i", "0")
        for k, v in env.items()
        if k[5:].lower() in fields and v and "${" not in v and k != "VECQ_CACHE_DIR"
    }
    (GatewaySettings if gateway else WorkerSettings)(**given)


def test_every_worker_gets_redis_url_and_one_gpu() -> None:
    for where, env in env_sources().items():
        if where.startswith(("compose worker", "k8s worker")):
            assert "VECQ_REDIS_URL" in env and env["VECQ_DEVICE"] == "cuda:0", where
    assert env_sources()["systemd unit"]["VECQ_DEVICE"] == "cuda:%i"


# --- YAML and Kubernetes schemas ---------------------------------------------------------------
@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = load_yaml(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_k8s_has_the_objects_issue_6_asks_for() -> None:
    kinds = sorted(o["kind"] for o in k8s_objects())
    assert kinds == sorted(
        [
            *["Deployment", "ScaledObject", "Secret", "Service", "TriggerAuthentication"],
            *["Deployment", "Secret", "Service"],  # the gateway's (issue 15)
        ]
    )


@pytest.mark.parametrize(
    "obj", [o for o in k8s_objects() if not o["apiVersion"].startswith("keda.sh/")], ids=lambda o: o["kind"]
)
def test_k8s_object_validates_against_its_schema(obj: dict) -> None:
    version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(obj, version, strict=True)  # strict: unknown fields fail too
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {str(exc).splitlines()[0]}")


def test_deployment_secret_and_service_fit_together() -> None:
    deploy, secret = k8s_one("Deployment", "vecq-worker"), k8s_one("Secret", "vecq-redis")
    service = k8s_one("Service", "vecq-worker-metrics")
    pod = deploy["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    (url,) = [e for e in c["env"] if e["name"] == "VECQ_REDIS_URL"]
    ref = url["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    env = {e["name"]: e.get("value") for e in c["env"]}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == int(env["VECQ_METRICS_PORT"])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]


# --- KEDA --------------------------------------------------------------------------------------
def test_keda_objects_are_well_formed() -> None:
    """No KEDA schema ships offline: check the fields the redis scaler reads, and the references."""
    so, auth = k8s_one("ScaledObject"), k8s_one("TriggerAuthentication")
    secret = k8s_one("Secret", "vecq-redis")
    assert so["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == "vecq-worker"
    k8s_one("Deployment", "vecq-worker")
    assert 0 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    for trig in so["spec"]["triggers"]:
        assert trig["type"] == "redis"
        assert trig["authenticationRef"]["name"] == auth["metadata"]["name"]
        meta = trig["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
        assert int(meta["listLength"]) > 0
        assert set(meta) <= {"listName", "listLength", "activationListLength", "databaseIndex", "enableTLS"}
    params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
    assert params == {"address", "password"}
    for r in auth["spec"]["secretTargetRef"]:
        assert r["name"] == secret["metadata"]["name"] and r["key"] in secret["stringData"]


def test_keda_lists_are_the_queue_keys_vecq_computes() -> None:
    lists = [t["metadata"]["listName"] for t in k8s_one("ScaledObject")["spec"]["triggers"]]
    models = {m.group(1) for name in lists if (m := re.fullmatch(r"rq:queue:vecq\.(.+)\.[a-z]+", name))}
    assert len(models) == 1, lists
    (model,) = models
    # The model whose queues the pods serve: VECQ_NAME if set, else the bundle's (the default).
    served = env_values(container("worker")).get("VECQ_NAME") or DEFAULT_MODEL
    assert model == served
    assert lists == queue_keys(model)
    # The gateway's allowlist (scale-from-zero: requests queue with no worker up) is that model.
    assert env_values(container("gateway"))["VECQ_MODELS"] == model


# --- compose -----------------------------------------------------------------------------------
def test_compose_redis_is_durable_and_password_protected() -> None:
    redis = compose()["services"]["redis"]
    assert redis["image"].split(":")[1].startswith("7")
    cmd = " ".join(_argv(redis["command"]))
    assert "--appendonly yes" in cmd and "--appendfsync everysec" in cmd and "--requirepass" in cmd
    assert any(v.endswith(":/data") for v in redis["volumes"])  # the AOF outlives the container


def test_compose_workers_one_gpu_each_with_password_and_metrics() -> None:
    workers = compose_workers()
    assert len(workers) >= 2
    gpus, host_ports = [], []
    for name, svc in workers.items():
        assert "${REDIS_PASSWORD}@redis:" in svc["environment"]["VECQ_REDIS_URL"], name
        (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert dev["capabilities"] == ["gpu"] and len(dev["device_ids"]) == 1, name
        gpus += dev["device_ids"]
        (port,) = svc["ports"]
        addr, host, container = port.split(":")
        assert addr == "127.0.0.1", f"{name}: metrics published on every interface"
        assert int(container) == int(svc["environment"]["VECQ_METRICS_PORT"]), name
        host_ports.append(host)
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert len(set(gpus)) == len(gpus) and len(set(host_ports)) == len(host_ports)


def test_compose_redis_is_reached_inside_the_network_only_and_the_rest_on_loopback() -> None:
    services = compose()["services"]
    assert "ports" not in services["redis"] and "network_mode" not in services["redis"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"compose {name}: {port} is on every interface"
    header = COMPOSE.read_text().split("\nname:")[0]
    assert "publishes no port" in header and "127.0.0.1" in header  # the header says so


def test_compose_gateway_builds_its_image_and_finds_redis_and_keys() -> None:
    gw = compose()["services"]["gateway"]
    assert gw["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile.gateway"}
    assert (COMPOSE.parent / gw["build"]["context"] / gw["build"]["dockerfile"]).is_file()
    env = gw["environment"]
    assert {env["VECQ_REDIS_URL"]} == {w["environment"]["VECQ_REDIS_URL"] for w in compose_workers().values()}
    assert env["VECQ_API_KEYS"].startswith("${VECQ_API_KEYS:?")  # from deploy/.env, required
    assert env["VECQ_HOST"] == "0.0.0.0"
    (port,) = gw["ports"]
    assert port == f"127.0.0.1:8000:{env['VECQ_PORT']}"
    assert gw["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "VECQ_API_KEYS=" in COMPOSE.read_text().split("\nname:")[0]  # the header sets it up


# --- the gateway -------------------------------------------------------------------------------
@cache
def gateway_routes() -> frozenset[str]:
    """The GET paths the gateway app serves (made as `vecq gateway` makes it; no Redis needed)."""
    app = create_app(GatewaySettings())
    return frozenset(r.path for r in app.routes if "GET" in getattr(r, "methods", ()))


def urls_in(argv: list[str]) -> list[str]:
    return re.findall(r"https?://[^'\"\s)]+", " ".join(argv))


def gateway_port() -> int:
    return int(env_values(container("gateway"))["VECQ_PORT"] or 0)


def test_gateway_deployment_secret_and_service_fit_together(tmp_path: Path) -> None:
    deploy = k8s_one("Deployment", "vecq-gateway")
    pod = deploy["spec"]["template"]["spec"]
    c = container("gateway")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    env = {e["name"]: e for e in c["env"]}
    ref = env["VECQ_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "vecq-redis" and ref["key"] in k8s_one("Secret", "vecq-redis")["stringData"]
    assert env["VECQ_HOST"]["value"] == "0.0.0.0"
    # VECQ_API_KEY_FILE is <a Secret volume's mount>/<a key of that Secret>, and the key holds keys.
    key_file = Path(env["VECQ_API_KEY_FILE"]["value"])
    (mount,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == key_file.parent]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    keys = k8s_one("Secret", volume["secret"]["secretName"])
    assert keys["metadata"]["name"] == "vecq-gateway-keys"
    (tmp_path / key_file.name).write_text(keys["stringData"][key_file.name])
    assert read_key_file(tmp_path / key_file.name)  # as the gateway reads it: at least one key
    # Room for in-flight requests, each waiting at most VECQ_TIMEOUT, and the preStop pause.
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= float(env["VECQ_TIMEOUT"]["value"]) + pause
    (http,) = c["ports"]
    assert http == {"name": "http", "containerPort": gateway_port()}
    service = k8s_one("Service", "vecq-gateway")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # Each Service selects one Deployment's pods: the worker metrics Service not the gateway's.
    for svc in (o for o in k8s_objects() if o["kind"] == "Service"):
        picked = [
            d["metadata"]["name"]
            for d in k8s_objects()
            if d["kind"] == "Deployment"
            and svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(picked) == 1, (svc["metadata"]["name"], picked)


def test_gateway_probes_and_healthcheck_use_routes_the_app_serves() -> None:
    c = container("gateway")
    live = c["livenessProbe"]["httpGet"]
    assert live["path"] == LIVENESS_PATH and live["port"] == "http"  # no key needed, reads nothing
    (ready,) = urls_in(c["readinessProbe"]["exec"]["command"])
    check = urls_in(gateway_healthcheck())
    assert check == [f"http://127.0.0.1:8000{LIVENESS_PATH}"]
    assert ready == f"http://127.0.0.1:{gateway_port()}/health"
    for url in [ready, *check]:
        path = "/" + url.split("/", 3)[3]
        assert path in gateway_routes(), f"{url}: the gateway serves no GET {path}"
    assert "curl" not in GATEWAY_DOCKERFILE.read_text().split("HEALTHCHECK", 1)[1]  # slim: no curl


def test_only_the_liveness_route_is_open_without_a_key() -> None:
    """Why readiness sends a key: with keys set, /health answers 401 without one, /livez 200."""
    client = TestClient(create_app(GatewaySettings(api_keys=["k1"])))  # no lifespan: no Redis
    assert client.get(LIVENESS_PATH).status_code == 200
    assert client.get("/health").status_code == 401
    assert client.get("/metrics").status_code == 401


class _Stub(BaseHTTPRequestHandler):
    """/health as the gateway's guard answers it (the real key check), with a chosen status."""

    status = 200
    keys = ApiKeys(["k1"])

    def do_GET(self) -> None:
        if self.path == LIVENESS_PATH:
            code = 200
        elif self.path != "/health":
            code = 404
        elif not self.keys.allows(self.headers.get("Authorization")):
            code = 401
        else:
            code = type(self).status
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[type[_Stub], int]]:
    handler = type("Stub", (_Stub,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield handler, server.server_address[1]
    server.shutdown()
    server.server_close()


def _run_probe(argv: list[str], port: int, env: dict[str, str] | None = None) -> int:
    assert argv[0] == "python"
    argv = [sys.executable, *[a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in argv[1:]]]
    return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode


def test_gateway_readiness_probe_sends_the_mounted_key(stub: tuple[type[_Stub], int], tmp_path: Path) -> None:
    handler, port = stub
    argv = container("gateway")["readinessProbe"]["exec"]["command"]
    key_file = tmp_path / "api-keys"
    env = {"VECQ_API_KEY_FILE": str(key_file)}
    key_file.write_text("# rotated 2026-12\n\nk1\nk-old\n")
    assert read_key_file(key_file)[0] == "k1"
    assert _run_probe(argv, port, env) == 0
    handler.status = 503  # Redis unreachable: not ready
    assert _run_probe(argv, port, env) != 0
    handler.status = 200
    key_file.write_text("wrong\n")  # 401: not ready either
    assert _run_probe(argv, port, env) != 0
    assert _run_probe(gateway_healthcheck(), port) == 0  # the image's HEALTHCHECK: /livez, no key


# --- systemd -----------------------------------------------------------------------------------
def test_systemd_unit_restarts_and_drains() -> None:
    entries = unit_entries()
    one = {k: v for k, v in entries if k != "Environment"}
    assert one["EnvironmentFile"] == "/etc/vecq/worker.env"
    assert one["Restart"] == "on-failure" and one["KillSignal"] == "SIGTERM"
    assert int(one["TimeoutStopSec"]) >= 60  # time to finish in-flight batches
    # EnvironmentFile= overrides Environment=: the shared file must not set per-instance values.
    per_instance = {v.split("=", 1)[0] for k, v in entries if k == "Environment"}
    assert not per_instance & set(env_file(ENV_EXAMPLE))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    """systemd's own parser: unknown keys or bad values are reported (the missing vecq binary is not
    this machine's business, so that one line is ignored)."""
    unit = tmp_path / "vecq-worker@0.service"  # an instance, so %i expands
    unit.write_text(UNIT.read_text())
    run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30)
    problems = [ln for ln in (run.stdout + run.stderr).splitlines() if ln and "is not executable" not in ln]
    assert not problems, problems


# --- issue 18: one ONNX Runtime, one bundle story, own-worker probes, KEDA from the URL --------
def _extra_requirements(extra: str) -> set[str]:
    """The distribution names an extra of vecq installs, its `vecq[...]` extras followed."""
    extras = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names: set[str] = set()
    for req in extras[extra]:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()  # type: ignore[union-attr]
        if name == "vecq":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):  # type: ignore[union-attr]
                names |= _extra_requirements(inner.strip())
        else:
            names.add(name)
    return names


def test_the_gpu_image_installs_one_onnx_runtime_the_gpu_build() -> None:
    (install,) = [rest for word, rest in dockerfile_instructions() if word == "RUN" and "pip install" in rest]
    assert install == 'pip install ".[gpu]"'
    gpu, cpu = _extra_requirements("gpu"), _extra_requirements("worker")
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu  # both install one module
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert gpu - {"onnxruntime-gpu"} == cpu - {"onnxruntime"}  # otherwise the same worker
    assert "[worker,gpu]" not in UNIT.read_text() and '"vecq[gpu]"' in UNIT.read_text()


def test_no_bundle_is_baked_in_and_each_worker_builds_into_a_cache_volume(monkeypatch) -> None:
    from vecq.engines.cache import cache_dir

    assert not [v for _, v, _ in vecq_invocations() if v == "build"], "no bundle is built into the image"
    for where, env in env_sources().items():
        assert "VECQ_BUNDLE" not in env or where.startswith(("systemd", "worker.env")), where
    steps = dockerfile_instructions()
    env = docker_env(DOCKERFILE)
    cache = env["VECQ_CACHE_DIR"]
    assert ("VOLUME", cache) in steps and env["TRITON_CACHE_DIR"].startswith(cache + "/")
    assert "/bundle" not in DOCKERFILE.read_text()
    monkeypatch.setenv("VECQ_CACHE_DIR", cache)
    assert cache_dir().parent == Path(cache)  # where engines/cache.py puts the bundles it builds
    volumes = []
    for name, svc in compose_workers().items():
        assert svc["environment"]["VECQ_CACHE_DIR"] == cache, name
        (mount,) = svc["volumes"]
        volume, _, target = mount.partition(":")
        assert target == cache and volume in compose()["volumes"], name
        volumes.append(volume)
    assert len(set(volumes)) == len(volumes)  # one per worker: two first starts never share a build
    c = container("worker")
    assert env_values(c)["VECQ_CACHE_DIR"] == cache
    assert env_values(c)["TRITON_CACHE_DIR"] == env["TRITON_CACHE_DIR"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == cache]
    pod = k8s_one("Deployment", "vecq-worker")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume or "hostPath" in volume or "persistentVolumeClaim" in volume


def test_worker_probes_check_this_containers_own_worker() -> None:
    own = ["vecq", "health", "--this-host"]
    (rest,) = [r for w, r in dockerfile_instructions() if w == "HEALTHCHECK"]
    assert healthcheck_argv(rest) == own
    c = container("worker")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"] == own, probe
    # The startup probe allows a first-start build (10 min), liveness a Redis failover (>= 1 min).
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 600
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60


def test_keda_address_password_and_database_come_from_the_one_redis_url() -> None:
    from urllib.parse import unquote, urlsplit

    secret = k8s_one("Secret", "vecq-redis")["stringData"]
    url = urlsplit(secret["VECQ_REDIS_URL"])
    assert secret["redis-address"] == f"{url.hostname}:{url.port or 6379}"
    assert secret["redis-password"] == unquote(url.password or "")
    db = url.path.strip("/") or "0"
    for trig in k8s_one("ScaledObject")["spec"]["triggers"]:
        assert trig["metadata"].get("databaseIndex", "0") == db
    # The workers and the gateway read that same key of that same Secret.
    for name in ("worker", "gateway"):
        env = {e["name"]: e for e in container(name)["env"]}
        ref = env["VECQ_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "vecq-redis", "key": "VECQ_REDIS_URL"}, name
