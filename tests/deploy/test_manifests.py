"""Static checks of deploy/: Docker and a cluster are not available here, so parse and cross-check.

What must agree with the service is read from the service at test time, never copied here:
env var names and defaults from `services.config.Settings`, flag → field from
`services.cli.main.SERVE_FLAGS`, and the accepted flags from `wapi-guard <command> --help`.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from adapters.persistence.db import create_engine
from services.cli.main import SERVE_FLAGS
from services.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
README = DEPLOY / "README.md"

ENV_PREFIX = "WAPIGUARD_"
ENTRYPOINT = "wapi-guard"
ALL_INTERFACES = {"0.0.0.0", "::", "[::]"}
# After the gRPC grace: span flush (force_flush 5 s) + metric reader shutdown (5 s), see
# services/observability/telemetry.py Telemetry.shutdown. The bridge close comes on top.
FLUSH_BUDGET_SECONDS = 10.0
# Files the image need not ship: Alembic's template for authoring migrations (`alembic revision`).
DEV_ONLY_DATA = ("*/migrations/script.py.mako",)
# PostgreSQL's default max_connections.
POSTGRES_MAX_CONNECTIONS = 100

# file → (apiVersion, kind) of every document in it; None: optional file.
K8S_FILES: dict[str, tuple[str, str, bool]] = {
    "deployment.yaml": ("apps/v1", "Deployment", True),
    "service.yaml": ("v1", "Service", True),
    "pdb.yaml": ("policy/v1", "PodDisruptionBudget", True),
    "hpa.yaml": ("autoscaling/v2", "HorizontalPodAutoscaler", True),
    "secret.example.yaml": ("v1", "Secret", True),
    "kustomization.yaml": ("kustomize.config.k8s.io/v1beta1", "Kustomization", True),
    "migrate-job.yaml": ("batch/v1", "Job", False),
}
NOT_APPLIED = {"secret.example.yaml", "kustomization.yaml"}

# ${NAME}, ${NAME:?msg}, ${NAME:-default}, ${NAME-default}, ${NAME?msg}, ${NAME:+alt}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[?+-])?(?P<arg>[^}]*)\}")
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|api_?key|private_?key|credential)")
CREDENTIAL_FIELDS = re.compile(r"(database_url|dsn)$")


# --- loading ---------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def load_yaml(path: Path) -> tuple[Any, ...]:
    with path.open(encoding="utf-8") as fh:
        return tuple(doc for doc in yaml.safe_load_all(fh) if doc is not None)


def k8s_docs(name: str) -> list[dict[str, Any]]:
    path = K8S / name
    return list(load_yaml(path)) if path.exists() else []


def k8s_one(name: str) -> dict[str, Any]:
    docs = k8s_docs(name)
    assert len(docs) == 1, f"{name}: expected one document, got {len(docs)}"
    doc: dict[str, Any] = docs[0]
    return doc


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def compose_service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    assert name in services, f"compose.yaml has no service {name!r}"
    svc: dict[str, Any] = services[name]
    return svc


@functools.cache
def help_flags(command: str) -> frozenset[str]:
    """The flags `wapi-guard <command>` accepts, from its --help (usage line and option list)."""
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    flags = set(re.findall(r"\[(--[a-z0-9][a-z0-9-]*)", out))
    flags |= set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", out, re.MULTILINE))
    assert flags, f"no flags parsed from `wapi-guard {command} --help`"
    return frozenset(flags)


def settings_env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def _is_secret_field(name: str, info: FieldInfo) -> bool:
    if info.annotation is SecretStr or SecretStr in get_args(info.annotation):
        return True
    if name.endswith("_file"):  # a path to a secret, not the secret
        return False
    return bool(SECRET_NAME.search(name) or CREDENTIAL_FIELDS.search(name))


def is_secret_env(name: str) -> bool:
    if name.startswith(ENV_PREFIX):
        info = Settings.model_fields.get(name[len(ENV_PREFIX) :].lower())
        if info is not None:
            return _is_secret_field(name[len(ENV_PREFIX) :].lower(), info)
    return not name.upper().endswith("_FILE") and bool(SECRET_NAME.search(name))


# --- Dockerfile --------------------------------------------------------------------------------


@dataclass
class Instruction:
    op: str
    args: str
    stage: int


def dockerfile() -> list[Instruction]:
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments (also inside continuations) and parser directives
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        op, _, args = full.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
        out.append(Instruction(op, args.strip(), stage))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def stages() -> list[tuple[str, str]]:
    """(image, stage name) per FROM."""
    result = []
    for ins in dockerfile():
        if ins.op == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            result.append((words[0], name))
    return result


def final_stage(op: str) -> list[Instruction]:
    last = len(stages()) - 1
    return [i for i in dockerfile() if i.op == op and i.stage == last]


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list), f"{ins.op} must be in exec (JSON array) form"
    return [str(v) for v in value]


def docker_env(stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in dockerfile():
        if ins.op == "ENV" and ins.stage == stage:
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                if sep:
                    env[key] = value
    return env


def dockerfile_cmd() -> list[str]:
    cmds = final_stage("CMD")
    assert cmds, "the runtime stage has no CMD"
    return exec_form(cmds[-1])


def shell_commands(run: str) -> Iterator[list[str]]:
    """The simple commands of a shell line (quotes respected), split at && || ; |."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            if words:
                yield words
            words = []
        else:
            words.append(token)
    if words:
        yield words


def copy_sources(ins: Instruction) -> list[str]:
    parts = exec_form(ins) if ins.args.startswith("[") else shlex.split(ins.args)
    parts = [p for p in parts if not p.startswith("--")]
    return parts[:-1]


def dockerignore_patterns() -> list[str]:
    if not DOCKERIGNORE.exists():
        return []
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Approximation of .dockerignore: last match wins, `!` re-includes, a dir pattern covers its tree."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = (raw[1:] if negate else raw).strip().strip("/")
        loose = pattern.replace("**/", "")
        if pattern == "**" or any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, loose) for p in prefixes):
            ignored = not negate
    return ignored


# --- container runs (what each container executes, with which env) -----------------------------


@dataclass
class Run:
    where: str
    argv: list[str]  # after the `wapi-guard` entrypoint: ["serve", ...]
    env: dict[str, Any] = field(default_factory=dict)  # name → literal str, or a k8s valueFrom dict
    container: dict[str, Any] = field(default_factory=dict)


def _argv(entrypoint: list[str] | None, args: list[str] | None, where: str) -> list[str]:
    if entrypoint:
        assert Path(entrypoint[0]).name == ENTRYPOINT, f"{where}: entrypoint {entrypoint} is not {ENTRYPOINT}"
        return [*entrypoint[1:], *(args or [])]
    return list(args) if args else dockerfile_cmd()


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def uses_our_image_compose(svc: dict[str, Any]) -> bool:
    build = svc.get("build")
    dockerfile_path = build.get("dockerfile", "") if isinstance(build, dict) else ""
    return str(dockerfile_path).endswith("deploy/Dockerfile")


def compose_env(svc: dict[str, Any]) -> dict[str, Any]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(k): ("" if v is None else str(v)) for k, v in env.items()}


def compose_runs() -> list[Run]:
    runs = []
    for name, svc in compose()["services"].items():
        if uses_our_image_compose(svc):
            argv = _argv(_as_list(svc.get("entrypoint")), _as_list(svc.get("command")), f"compose:{name}")
            runs.append(Run(f"compose:{name}", argv, compose_env(svc), svc))
    return runs


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for file in ("deployment.yaml", "migrate-job.yaml"):
        for doc in k8s_docs(file):
            specs.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
    return specs


def k8s_runs() -> list[Run]:
    runs = []
    for where, spec in pod_specs():
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
            argv = _argv(container.get("command"), container.get("args"), where)
            runs.append(Run(f"k8s:{where}:{container['name']}", argv, env, container))
    return runs


def dockerfile_run() -> Run:
    return Run("Dockerfile CMD", dockerfile_cmd(), docker_env(len(stages()) - 1))


def serve_runs() -> list[Run]:
    return [r for r in [*compose_runs(), *k8s_runs(), dockerfile_run()] if r.argv[:1] == ["serve"]]


def flag_value(argv: list[str], flag: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def effective(run: Run, name: str) -> Any:
    """The value `serve` would use for a Settings field: flag, else WAPIGUARD_ env, else default."""
    for flag, (field_name, _kind) in SERVE_FLAGS.items():
        if field_name == name and (value := flag_value(run.argv, flag)) is not None:
            return value
    env = run.env.get(ENV_PREFIX + name.upper())
    if isinstance(env, str):
        return env
    return Settings.model_fields[name].default


def duration_seconds(text: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)", str(text))
    assert parts, f"bad duration {text!r}"
    assert "".join(a + u for a, u in parts) == str(text), f"bad duration {text!r}"
    return sum(float(amount) * units[unit] for amount, unit in parts)


def main_container() -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, container) of the Deployment's container running `serve`."""
    spec = k8s_one("deployment.yaml")["spec"]["template"]["spec"]
    serving = [c for c in spec["containers"] if _argv(c.get("command"), c.get("args"), "Deployment")[:1] == ["serve"]]
    assert len(serving) == 1, "the Deployment must have exactly one container running `serve`"
    return spec, serving[0]


def main_run() -> Run:
    (run,) = [r for r in k8s_runs() if r.where.startswith("k8s:Deployment/") and r.argv[:1] == ["serve"]]
    return run


def container_port(container: dict[str, Any], target: int | str) -> int:
    for port in container.get("ports", []):
        if target in (port.get("name"), port["containerPort"]):
            return int(port["containerPort"])
    raise AssertionError(f"container {container['name']} has no port {target!r}")


def prestop_sleep(container: dict[str, Any]) -> float:
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    match = re.search(r"(?:^|\s)sleep\s+(\d+(?:\.\d+)?)", " ".join(command))
    assert match, f"no preStop sleep in {command!r}"
    return float(match.group(1))


def deploy_text_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


# --- YAML and Kubernetes objects ---------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path.name} has no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path.name}: every document must be a mapping"


def test_expected_files_exist() -> None:
    for name in ("Dockerfile", "compose.yaml", "README.md"):
        assert (DEPLOY / name).is_file(), name
    for name, (_api, _kind, required) in K8S_FILES.items():
        assert (K8S / name).is_file() or not required, f"deploy/k8s/{name} is missing"
    unknown = {p.name for p in K8S.glob("*.y*ml")} - set(K8S_FILES)
    assert not unknown, f"unexpected manifests (add them to K8S_FILES): {sorted(unknown)}"


@pytest.mark.parametrize("name", [n for n, spec in K8S_FILES.items() if spec[2] or (K8S / n).exists()])
def test_k8s_objects_have_identity_and_kind(name: str) -> None:
    api_version, kind, _ = K8S_FILES[name]
    docs = k8s_docs(name)
    assert docs, name
    for doc in docs:
        assert doc.get("apiVersion") == api_version, f"{name}: apiVersion {doc.get('apiVersion')!r}"
        assert doc.get("kind") == kind, f"{name}: kind {doc.get('kind')!r}"
        if kind != "Kustomization":
            assert doc.get("metadata", {}).get("name"), f"{name}: metadata.name is missing"


def test_kustomization_lists_the_manifests() -> None:
    kustomization = k8s_one("kustomization.yaml")
    resources = kustomization.get("resources", [])
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization lists missing {resource}"
    applied = {n for n in K8S_FILES if (K8S / n).exists()} - NOT_APPLIED
    assert set(resources) == applied
    assert "secret.example.yaml" not in resources, "the example Secret must never be applied"
    images = {i["name"] for i in kustomization.get("images", [])}
    for run in k8s_runs():
        assert run.container["image"].split(":")[0] in images, f"{run.where}: image not managed by kustomization"


def test_selectors_match_pod_labels() -> None:
    deployment = k8s_one("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert k8s_one("service.yaml")["spec"]["selector"].items() <= pod_labels.items()
    assert k8s_one("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = k8s_one("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )


def test_replicas_disruption_budget_and_autoscaling() -> None:
    replicas = k8s_one("deployment.yaml")["spec"]["replicas"]
    assert replicas == 2
    assert k8s_one("pdb.yaml")["spec"]["minAvailable"] == 1
    hpa = k8s_one("hpa.yaml")["spec"]
    assert hpa["minReplicas"] >= replicas > k8s_one("pdb.yaml")["spec"]["minAvailable"], "drains must be possible"
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    _spec, container = main_container()
    assert container["resources"]["requests"]["cpu"], "CPU utilization needs a CPU request"


def test_autoscaling_fits_postgres_connections() -> None:
    """Each pod's pool: pool_size + max_overflow (= pool_size), see adapters/persistence/db.py."""
    pool_size = inspect.signature(create_engine).parameters["pool_size"].default
    per_pod = 2 * pool_size
    max_replicas = k8s_one("hpa.yaml")["spec"]["maxReplicas"]
    assert max_replicas * per_pod <= POSTGRES_MAX_CONNECTIONS, (
        f"{max_replicas} pods x {per_pod} connections exceed Postgres' default {POSTGRES_MAX_CONNECTIONS}"
    )


# --- probes, ports and shutdown ------------------------------------------------------------------


def test_probes_are_grpc_on_the_port_the_service_targets() -> None:
    _spec, container = main_container()
    grpc_port = int(effective(main_run(), "grpc_port"))
    http_port = int(effective(main_run(), "http_port"))
    ports = {p["name"]: p for p in k8s_one("service.yaml")["spec"]["ports"]}
    assert {"grpc", "http"} <= ports.keys()
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert container_port(container, ports["grpc"]["targetPort"]) == grpc_port
    assert container_port(container, ports["http"]["targetPort"]) == http_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container, f"{probe} is missing"
        action = container[probe]
        assert set(action) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{probe} must be a gRPC probe"
        assert action["grpc"]["port"] == grpc_port, f"{probe} probes {action['grpc']['port']}, gRPC is on {grpc_port}"
        assert action["grpc"].get("service", "") == "", f"{probe}: the server reports overall health on ''"


def test_grpc_probes_can_reach_the_health_service() -> None:
    """The kubelet's gRPC probe speaks plaintext and sends no metadata."""
    run = main_run()
    assert not effective(run, "tls_cert_file"), "kubelet gRPC probes cannot do TLS: keep TLS off on the probed port"
    open_health = effective(run, "auth_open_health")
    assert str(open_health).lower() not in ("false", "0", "no", "off"), "probes need the health service open"


def test_container_ports_match_settings() -> None:
    for run in serve_runs():
        grpc_port, http_port = int(effective(run, "grpc_port")), int(effective(run, "http_port"))
        if run.where.startswith("compose:"):
            published = set()
            for item in run.container.get("ports", []):
                target = item["target"] if isinstance(item, dict) else str(item).rsplit(":", 1)[-1].split("/")[0]
                published.add(int(target))
            assert {grpc_port, http_port} <= published, f"{run.where}: publishes {published}"
        elif run.where.startswith("k8s:"):
            declared = {p["containerPort"] for p in run.container.get("ports", [])}
            assert {grpc_port, http_port} <= declared, f"{run.where}: declares {declared}"
        else:
            exposed = {int(p.split("/")[0]) for i in final_stage("EXPOSE") for p in i.args.split()}
            assert {grpc_port, http_port} <= exposed, f"Dockerfile exposes {exposed}"


def test_servers_listen_on_all_interfaces() -> None:
    for run in serve_runs():
        assert effective(run, "host") in ALL_INTERFACES, f"{run.where}: listens on {effective(run, 'host')}"


def test_termination_grace_outlasts_the_drain() -> None:
    spec, container = main_container()
    period = spec["terminationGracePeriodSeconds"]
    default_grace = Settings.model_fields["shutdown_grace"].default
    grace = float(effective(main_run(), "shutdown_grace"))
    assert period > default_grace
    assert period > grace
    sleep = prestop_sleep(container)
    assert sleep > 0
    assert period > sleep + grace + FLUSH_BUDGET_SECONDS, (
        f"terminationGracePeriodSeconds {period} <= preStop {sleep} + grace {grace} + flush {FLUSH_BUDGET_SECONDS}"
    )


def test_compose_stop_grace_outlasts_the_drain() -> None:
    for run in compose_runs():
        if run.argv[:1] == ["serve"]:
            grace = float(effective(run, "shutdown_grace"))
            stop = duration_seconds(run.container.get("stop_grace_period", "10s"))
            assert stop > grace + FLUSH_BUDGET_SECONDS, f"{run.where}: stop_grace_period {stop}s, grace {grace}s"


def test_shutdown_grace_covers_a_provider_send() -> None:
    """A SIGTERM must not cut a send in flight: the grace is at least one provider call."""
    for run in serve_runs():
        if run.where == "Dockerfile CMD":
            continue  # bare `docker run`: Settings defaults, the orchestrator files set it
        assert float(effective(run, "shutdown_grace")) >= float(effective(run, "send_timeout")), run.where


def test_pod_security() -> None:
    spec, _container = main_container()
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    user = final_stage("USER")[-1].args.split(":")[0]
    assert str(pod["runAsUser"]) == user, "runAsUser should be the image's USER"
    assert spec.get("automountServiceAccountToken") is False
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert "ALL" in sc["capabilities"]["drop"], container["name"]
        assert container["resources"]["requests"]["memory"], container["name"]
        assert container["resources"]["limits"]["memory"], container["name"]


def test_migrations_run_before_serve() -> None:
    migrate = [r for r in k8s_runs() if r.argv[:1] == ["migrate"]]
    assert migrate, "no initContainer or Job runs `wapi-guard migrate`"
    _spec, container = main_container()
    assert all(r.container["image"] == container["image"] for r in migrate)
    for run in [*k8s_runs(), *compose_runs()]:
        if run.argv[:1] == ["serve"]:
            assert "--no-migrate" in run.argv, f"{run.where}: migrations run elsewhere; serve with --no-migrate"
    spec = k8s_one("deployment.yaml")["spec"]["template"]["spec"]
    in_init = any(
        _argv(c.get("command"), c.get("args"), "init")[:1] == ["migrate"] for c in spec.get("initContainers", [])
    )
    assert in_init or k8s_docs("migrate-job.yaml"), "migrate must run in an initContainer or a Job"


# --- names: env vars and flags ------------------------------------------------------------------


def referenced_env_names() -> dict[str, set[str]]:
    """Every WAPIGUARD_* name written anywhere in deploy/, by file."""
    found: dict[str, set[str]] = {}
    for path in deploy_text_files():
        words = re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_*]*", path.read_text(encoding="utf-8"))
        names = {w.rstrip("_") for w in words if "*" not in w}  # WAPIGUARD_TLS_* is a family, not a name
        if names:
            found[str(path.relative_to(DEPLOY))] = names
    return found


def test_every_env_var_is_a_settings_field() -> None:
    known = settings_env_names()
    structured = {name for run in [*compose_runs(), *k8s_runs()] for name in run.env if name.startswith(ENV_PREFIX)}
    assert structured, "no WAPIGUARD_* variable found in compose/k8s"
    assert structured <= known, f"not Settings fields: {sorted(structured - known)}"
    for file, names in referenced_env_names().items():
        assert names <= known, f"{file}: not Settings fields: {sorted(names - known)}"


def test_every_flag_exists() -> None:
    for run in [*compose_runs(), *k8s_runs(), dockerfile_run()]:
        command, *rest = run.argv
        assert command in ("serve", "migrate"), f"{run.where}: unexpected command {command!r}"
        flags = {arg.split("=", 1)[0] for arg in rest if arg.startswith("--")}
        unknown = flags - help_flags(command)
        assert not unknown, f"{run.where}: `wapi-guard {command}` has no {sorted(unknown)}"


def test_flag_table_and_help_agree() -> None:
    """SERVE_FLAGS (used by effective()) is what `serve --help` offers."""
    assert set(SERVE_FLAGS) <= help_flags("serve")


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_one_base() -> None:
    images = stages()
    assert len(images) >= 2
    builder, runtime = images[0], images[-1]
    assert builder[1], "name the builder stage"
    assert builder[0] == runtime[0], "the copied venv links to the base image's python: same base in both stages"


def test_dockerfile_runs_as_non_root() -> None:
    users = final_stage("USER")
    assert users, "the runtime stage must set USER"
    user, _, group = users[-1].args.partition(":")
    assert user not in ("root", "0")
    assert group not in ("root", "0")
    assert user.isdigit(), "a numeric UID lets Kubernetes verify runAsNonRoot"


def test_dockerfile_entrypoint_and_cmd() -> None:
    entrypoints = final_stage("ENTRYPOINT")
    assert entrypoints
    assert exec_form(entrypoints[-1]) == [ENTRYPOINT]
    assert dockerfile_cmd() == ["serve", "--host", "0.0.0.0"]
    assert not [i for i in dockerfile() if i.op == "HEALTHCHECK"], "orchestrators probe gRPC; no HEALTHCHECK"
    assert docker_env(len(stages()) - 1).get("PYTHONUNBUFFERED") == "1"


def test_dockerfile_installs_with_the_constraints() -> None:
    assert (ROOT / "constraints.txt").is_file()
    installs = [
        words
        for ins in dockerfile()
        if ins.op == "RUN"
        for words in shell_commands(ins.args)
        if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]
    ]
    assert installs, "no pip install"
    project = [w for w in installs if "." in w]
    assert project, "the package (.) is never installed"
    for words in installs:
        constrained = any(
            w in ("-c", "--constraint") and words[i + 1] == "constraints.txt" for i, w in enumerate(words[:-1])
        ) or any(w in ("-cconstraints.txt", "--constraint=constraints.txt") for w in words)
        assert constrained, f"pip install without -c constraints.txt: {' '.join(words)}"
    copied = {src for ins in dockerfile() if ins.op == "COPY" for src in copy_sources(ins)}
    assert "constraints.txt" in copied


def test_dockerfile_copies_the_builder_venv() -> None:
    venvs = {
        words[-1]
        for ins in dockerfile()
        if ins.op == "RUN" and ins.stage == 0
        for words in shell_commands(ins.args)
        if words[1:3] == ["-m", "venv"]
    }
    assert len(venvs) == 1, "the builder should create one venv"
    (venv,) = venvs
    copies = [shlex.split(i.args) for i in final_stage("COPY") if i.args.startswith("--from=")]
    assert any(c[1:] == [venv, venv] for c in copies), f"the runtime must COPY --from the builder {venv} to {venv}"
    assert f"{venv}/bin" in docker_env(len(stages()) - 1).get("PATH", "")


def test_dockerfile_copy_sources_exist_and_are_in_the_context() -> None:
    patterns = dockerignore_patterns()
    for ins in dockerfile():
        if ins.op != "COPY" or "--from=" in ins.args:
            continue
        for source in copy_sources(ins):
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if "__pycache__" in rel or rel.endswith((".pyc", ".pyo")):
                    continue
                assert not dockerignored(rel, patterns), f"{rel} is excluded by {DOCKERIGNORE.name}"
    for junk in (".venv/bin/python", ".git/HEAD", "wapi-guard.db", "tests/conftest.py"):
        assert not patterns or dockerignored(junk, patterns), f"{junk} would be sent to the build context"


def test_the_wheel_ships_every_file_the_code_needs() -> None:
    """The image installs a wheel, not an editable checkout: files outside `.py` modules of
    found packages (templates, static assets, migrations dirs without __init__) need package-data."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    package_data: dict[str, list[str]] = setuptools.get("package-data", {})
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    missing = []
    for rel in listed:
        path = PurePosixPath(rel)
        if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo") or not (ROOT / rel).is_file():
            continue
        if any(fnmatch.fnmatchcase(rel, pattern) for pattern in DEV_ONLY_DATA):
            continue
        package_dir = path.parent
        while package_dir.parts and not (ROOT / package_dir / "__init__.py").is_file():
            package_dir = package_dir.parent
        package = ".".join(package_dir.parts)
        if not package or not any(fnmatch.fnmatchcase(package, pattern) for pattern in include):
            continue
        inside = path.relative_to(package_dir).as_posix()
        if path.parent == package_dir and path.suffix == ".py":
            continue  # a module of the package
        patterns = [*package_data.get("*", []), *package_data.get(package, [])]
        if not any(fnmatch.fnmatchcase(inside, pattern) for pattern in patterns):
            missing.append(rel)
    assert not missing, f"not in [tool.setuptools.package-data], so not in the image: {missing}"


# --- compose ------------------------------------------------------------------------------------


def test_compose_services_and_order() -> None:
    services = compose()["services"]
    assert {"postgres", "migrate", "wapi-guard", "jaeger"} <= services.keys()
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    assert postgres["healthcheck"]["test"]
    runs = {r.where.split(":", 1)[1]: r for r in compose_runs()}
    assert runs["migrate"].argv[:1] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    serve = runs["wapi-guard"]
    assert serve.argv[:1] == ["serve"]
    assert services["wapi-guard"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert str(effective(serve, "database_url")).startswith("postgresql+asyncpg://")
    assert effective(runs["migrate"], "database_url") == effective(serve, "database_url")


def test_jaeger_receives_the_traces() -> None:
    jaeger = compose_service("jaeger")
    assert str(jaeger["image"]).startswith("jaegertracing/all-in-one")
    assert str(compose_env(jaeger).get("COLLECTOR_OTLP_ENABLED")).lower() == "true"
    published = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in jaeger.get("ports", [])}
    assert {4317, 16686} <= published
    env = compose_env(compose_service("wapi-guard"))
    assert env["OTEL_SERVICE_NAME"] == "wapi-guard"
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname == "jaeger"
    assert endpoint.port == 4317
    assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "grpc", "4317 is Jaeger's OTLP gRPC port"


# --- secrets ------------------------------------------------------------------------------------


def compose_strings(node: Any) -> Iterator[str]:
    """Every string in compose.yaml (what compose interpolates; comments are not)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from compose_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from compose_strings(item)
    elif isinstance(node, str):
        yield node


def compose_interpolations() -> list[re.Match[str]]:
    return [m for text in compose_strings(compose()) for m in INTERPOLATION.finditer(text)]


def _required_interpolation(value: str) -> bool:
    match = INTERPOLATION.fullmatch(value)
    return bool(match and match.group("op") == ":?")


def _url_password_ok(value: str) -> bool:
    """A URL's password (if any) is a single ${VAR:?…}; no literal password."""
    refs: list[str] = []

    def stash(match: re.Match[str]) -> str:
        refs.append(match.group(0))
        return f"ENVREF{len(refs) - 1}"

    url = urlsplit(INTERPOLATION.sub(stash, value))
    if url.password is None:
        return True
    ref = re.fullmatch(r"ENVREF(\d+)", url.password)
    return bool(ref and _required_interpolation(refs[int(ref.group(1))]))


def test_k8s_secret_env_comes_from_secret_key_refs() -> None:
    secret = k8s_one("secret.example.yaml")
    keys = {*secret.get("stringData", {}), *secret.get("data", {})}
    for run in k8s_runs():
        for item in run.container.get("env", []):
            if is_secret_env(item["name"]):
                assert "value" not in item, f"{run.where}: {item['name']} has a literal value"
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                assert ref, f"{run.where}: {item['name']} must come from a secretKeyRef"
                assert ref["name"] == secret["metadata"]["name"], f"{run.where}: {item['name']} → {ref['name']}"
                assert ref["key"] in keys, f"{run.where}: key {ref['key']!r} is not in the example Secret"
    env = main_run().env
    for name in ("WAPIGUARD_DATABASE_URL", "WAPIGUARD_WEBHOOK_SECRET", "WAPIGUARD_API_TOKENS"):
        assert isinstance(env.get(name), dict), f"the server needs {name} from the Secret"


def test_compose_secrets_are_required_interpolations() -> None:
    for name, svc in compose()["services"].items():
        for key, value in compose_env(svc).items():
            if is_secret_env(key):
                ok = _required_interpolation(value) or ("://" in value and _url_password_ok(value))
                assert ok, f"compose {name}: {key} must be ${{VAR:?…}} (or a URL whose password is)"
            if "://" in value:
                assert _url_password_ok(value), f"compose {name}: {key} embeds a literal password"
    for match in compose_interpolations():
        if is_secret_env(match.group("name")):
            assert match.group("op") == ":?", f"${{{match.group('name')}}} must be required, with no default"


def test_env_example_holds_no_values() -> None:
    assert ENV_EXAMPLE.is_file()
    entries = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    for key, value in entries.items():
        if is_secret_env(key):
            assert value.strip() == "", f".env.example: {key} must be empty"
    required = {m.group("name") for m in compose_interpolations()}
    assert required <= entries.keys(), f".env.example lacks {sorted(required - entries.keys())}"


def test_example_secret_has_only_placeholders() -> None:
    path = K8S / "secret.example.yaml"
    assert "EXAMPLE" in path.read_text(encoding="utf-8").upper()
    secret = k8s_one("secret.example.yaml")
    values = dict(secret.get("stringData", {}))
    values |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    assert values
    for key, value in values.items():
        if "://" in value:
            url = urlsplit(value)
            assert url.password is None or PLACEHOLDER.fullmatch(url.password), f"{key}: password is not a placeholder"
        else:
            parts = [p for p in re.split(r"[,:@|\s]", value) if p]
            assert parts, f"{key} is empty"
            assert all(PLACEHOLDER.fullmatch(p) for p in parts), f"{key}: {value!r} is not all <PLACEHOLDERS>"


def test_no_literal_secrets_anywhere_in_deploy() -> None:
    url_password = re.compile(r"[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:(\$\{[^}]*\}|[^\s@'\"/]+)@")
    for path in deploy_text_files():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(DEPLOY)
        assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), f"{rel}: private key"
        for match in url_password.finditer(text):
            password = match.group(1)
            assert PLACEHOLDER.fullmatch(password) or password.startswith("$"), f"{rel}: literal password in URL"
        for match in re.finditer(r"(?i)\bbearer\s+([A-Za-z0-9._~+/=-]{12,})", text):
            pytest.fail(f"{rel}: literal bearer token {match.group(1)[:4]}…")
        for match in re.finditer(r"(?<![A-Za-z0-9:])[A-Fa-f0-9]{32,}(?![A-Za-z0-9])", text):
            pytest.fail(f"{rel}: hex blob that looks like a secret ({match.group(0)[:6]}…)")


# --- README ---------------------------------------------------------------------------------


def test_readme_matches_the_manifests_and_the_code() -> None:
    text = README.read_text(encoding="utf-8")
    assert "docker compose -f deploy/compose.yaml" in text
    assert "http://localhost:16686" in text
    assert "apply -k deploy/k8s" in text
    keys = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for run in k8s_runs()
        for item in run.container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    for key in keys:
        assert f"`{key}`" in text, f"README does not explain Secret key {key}"
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "services").rglob("*.py"))
    for name in ("wapi.send_attempt", "wapi.webhook", "wapi.message_id", "wapi.instance_id"):
        assert name in text, f"README should mention {name}"
        assert f'"{name}"' in source, f"README names {name}, which the service no longer emits"


def test_annotation_scraped_pods_open_metrics_or_the_scraper_carries_a_token() -> None:
    """With API tokens, /metrics answers 401 without one. A pod advertised through the
    prometheus.io/* annotations is scraped by a job that sends none, so such a pod must open
    /metrics explicitly (WAPIGUARD_METRICS_OPEN / --open-metrics); a compose run, scraped by hand,
    must say in its file how to pass the token."""
    for doc in k8s_docs("deployment.yaml"):
        annotations = doc["spec"]["template"]["metadata"].get("annotations") or {}
        if str(annotations.get("prometheus.io/scrape", "")).lower() != "true":
            continue
        run = main_run()
        assert annotations.get("prometheus.io/path") == "/metrics"
        assert isinstance(run.env.get("WAPIGUARD_API_TOKENS"), dict), "auth is on in the Deployment"
        opened = "--open-metrics" in run.argv or str(effective(run, "metrics_open")).lower() == "true"
        assert opened, "annotation scrapes carry no token: open /metrics or drop the annotations"
    for run in compose_runs():
        if run.argv[:1] != ["serve"] or str(effective(run, "metrics_open")).lower() == "true":
            continue
        assert "Authorization: Bearer" in COMPOSE.read_text(encoding="utf-8")


# --- secure by default (serve refuses a non-loopback address without tokens and a secret) ------


def _configured(run: Run, name: str) -> bool:
    """Whether `serve` gets the setting: a flag, a non-empty literal or interpolated env value, or a
    Kubernetes secretKeyRef that is not optional."""
    for flag, (field_name, _kind) in SERVE_FLAGS.items():
        if field_name == name and flag_value(run.argv, flag):
            return True
    value = run.env.get(ENV_PREFIX + name.upper())
    if isinstance(value, dict):
        ref = value.get("secretKeyRef") or {}
        return bool(ref.get("name") and ref.get("key")) and not ref.get("optional", False)
    return bool(value and str(value).strip())


def _insecure(run: Run) -> bool:
    return "--insecure" in run.argv or str(effective(run, "insecure")).lower() in ("1", "true", "yes", "on")


def test_shipped_servers_start_closed_on_all_interfaces() -> None:
    """Every compose and Kubernetes `serve` listens on all interfaces, so it must get API tokens and
    (its bridge is on) a webhook secret, from secrets, and never be started with --insecure:
    otherwise it refuses to start (services/rpc/exposure.py)."""
    deployed = [r for r in serve_runs() if r.where != "Dockerfile CMD"]
    assert deployed
    for run in deployed:
        assert effective(run, "host") in ALL_INTERFACES
        assert not _insecure(run), f"{run.where}: a shipped deployment must not be --insecure"
        assert _configured(run, "api_tokens"), f"{run.where}: serve would refuse to start without API tokens"
        if int(effective(run, "http_port")) >= 0:
            assert _configured(run, "webhook_secret"), f"{run.where}: serve would refuse to start without a secret"


def test_the_image_alone_is_not_open() -> None:
    """The image's CMD listens on 0.0.0.0 without secrets, so a bare `docker run` refuses to start
    until they are passed; the image never turns --insecure on by itself, and the README's
    `docker run` passes both."""
    run = dockerfile_run()
    assert not _insecure(run)
    assert not _configured(run, "api_tokens"), "no token is baked into the image"
    text = README.read_text(encoding="utf-8")
    lines = text.replace("\\\n", " ").splitlines()  # shell continuations joined
    runs = [line for line in lines if "docker run" in line and "wapi-guard:local" in line]
    assert runs, "deploy/README.md shows no `docker run`"
    for line in runs:
        assert "WAPIGUARD_API_TOKENS" in line, line
        assert "WAPIGUARD_WEBHOOK_SECRET" in line, line


def test_compose_sets_the_public_url_and_says_it_needs_compose_v2() -> None:
    env = compose_env(compose_service("wapi-guard"))
    # Without a public URL the instance's webhooks point nowhere and no receipt ever arrives.
    assert env.get("WAPIGUARD_PUBLIC_URL", "").startswith("${WAPIGUARD_PUBLIC_URL:?")
    assert re.search(r"^WAPIGUARD_PUBLIC_URL=$", ENV_EXAMPLE.read_text(), re.M)
    assert "name" in compose()  # the top-level `name:` needs Compose v2 …
    readme = (DEPLOY / "README.md").read_text()
    assert "Compose v2" in readme  # … and the README says so
    assert "Compose v2" in COMPOSE.read_text()
