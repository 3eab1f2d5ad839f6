"""deploy/: every file is checked against what vecq really accepts.

YAML parses; Kubernetes objects validate against the Kubernetes JSON schemas shipped offline by
`kubernetes-validate` (KEDA's CRDs have no schema there, so they are checked structurally); every
`vecq` command and flag is one the CLI accepts (its `--help`); every `VECQ_*` variable is a
WorkerSettings / ProducerSettings field and its value passes WorkerSettings' validation; KEDA's
list names are the queue keys vecq computes.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from vecq.producer.contract import DEFAULT_MODEL
from vecq.producer.keys import queue_keys
from vecq.producer.settings import ProducerSettings
from vecq.worker.cli import main
from vecq.worker.settings import WorkerSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
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


def k8s_one(kind: str) -> dict:
    (obj,) = [o for o in k8s_objects() if o["kind"] == kind]
    return obj


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with `\\` continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
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


# --- commands ----------------------------------------------------------------------------------
def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command line in deploy/ that may run vecq."""
    found: list[tuple[str, list[str]]] = []
    for word, rest in dockerfile_instructions():
        if word in ("ENTRYPOINT", "CMD") and rest.startswith("["):
            found.append((f"Dockerfile {word}", json.loads(rest)))
        elif word == "HEALTHCHECK":
            cmd = re.split(r"(?:^|\s)CMD\s+", rest, maxsplit=1)[1].strip()
            argv = json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)
            found.append(("Dockerfile HEALTHCHECK", argv))
        elif word == "RUN":
            found.append(("Dockerfile RUN", shlex.split(rest.replace(";", " ; "))))
    for name, svc in compose()["services"].items():
        for key in ("entrypoint", "command"):
            if key in svc:
                found.append((f"compose {name}.{key}", _argv(svc[key])))
        if "healthcheck" in svc:
            found.append((f"compose {name}.healthcheck", _argv(svc["healthcheck"]["test"])))
    for c in containers():
        found.append((f"k8s {c['name']}", c.get("command", []) + c.get("args", [])))
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in c:
                found.append((f"k8s {c['name']}.{probe}", c[probe]["exec"]["command"]))
    found += [("systemd ExecStart", shlex.split(v)) for k, v in unit_entries() if k == "ExecStart"]
    return found


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
    # Not vacuous: the worker entrypoint, its health check and the image's bundle build are seen.
    assert {"worker", "health", "build"} <= {verb for _, verb, _ in invocations}
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
    for c in containers():
        assert c["command"] == ["vecq", "worker"] and not c.get("args")
    assert [v for k, v in unit_entries() if k == "ExecStart"] == ["/opt/vecq/bin/vecq worker"]


# --- VECQ_* environment ------------------------------------------------------------------------
def env_sources() -> dict[str, dict[str, str]]:
    """Every place that sets VECQ_* variables: {where: {NAME: value}} (value '' when from a secret)."""
    sources: dict[str, dict[str, str]] = {}
    docker = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            docker.update(dict(tok.split("=", 1) for tok in shlex.split(rest)))
    sources["Dockerfile ENV"] = docker
    for name, svc in compose()["services"].items():
        sources[f"compose {name}"] = {k: str(v) for k, v in svc.get("environment", {}).items()}
    for c in containers():
        sources[f"k8s {c['name']}"] = {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}
    sources["k8s Secret"] = dict(k8s_one("Secret")["stringData"])
    sources["systemd unit"] = dict(v.split("=", 1) for k, v in unit_entries() if k == "Environment")
    sources["worker.env.example"] = env_file(ENV_EXAMPLE)
    return {where: {k: v for k, v in env.items() if k.startswith("VECQ_")} for where, env in sources.items()}


WORKER_FIELDS = set(WorkerSettings.model_fields)
KNOWN_ENV = {"VECQ_" + f.upper() for f in WORKER_FIELDS | set(ProducerSettings.model_fields)}


@pytest.mark.parametrize("where", list(env_sources()))
def test_vecq_env_vars_are_settings_with_valid_values(where: str) -> None:
    env = env_sources()[where]
    unknown = set(env) - KNOWN_ENV
    assert not unknown, f"{where}: {sorted(unknown)} are no vecq setting"
    # Literal values (not `${...}` interpolations or secret refs) must pass WorkerSettings' checks;
    # systemd's %i is an instance number.
    given = {
        k[5:].lower(): v.replace("%i", "0")
        for k, v in env.items()
        if k[5:].lower() in WORKER_FIELDS and v and "${" not in v
    }
    WorkerSettings(**given)


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
    assert kinds == ["Deployment", "ScaledObject", "Secret", "Service", "TriggerAuthentication"]


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
    deploy, secret, service = k8s_one("Deployment"), k8s_one("Secret"), k8s_one("Service")
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
    so, auth, secret = k8s_one("ScaledObject"), k8s_one("TriggerAuthentication"), k8s_one("Secret")
    assert so["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == k8s_one("Deployment")["metadata"]["name"]
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
    (c,) = containers()
    served = {e["name"]: e.get("value") for e in c["env"]}.get("VECQ_NAME") or DEFAULT_MODEL
    assert model == served
    assert lists == queue_keys(model)


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
        host, container = port.split(":")
        assert int(container) == int(svc["environment"]["VECQ_METRICS_PORT"]), name
        host_ports.append(host)
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert len(set(gpus)) == len(gpus) and len(set(host_ports)) == len(host_ports)


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
