"""The deployment files are coherent: Dockerfile, compose.yaml and deploy/kubernetes/.

No Docker engine or cluster is needed. Kubernetes resources are validated against the
OpenAPI schemas that `kubernetes-validate` ships; KEDA's ScaledObjects (a CRD it does not
know) against tests/data/keda-scaledobject.schema.json. Everything else is checked by
reading the files: names that refer to each other exist, commands are real CLI commands,
settings are ones the code reads.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.cli import main as cli
from orchestrator.healthcheck import _parser as healthcheck_parser
from orchestrator.registry import load_workflows
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMA = ROOT / "tests" / "data" / "keda-scaledobject.schema.json"

#: Oldest Kubernetes the manifests support; they are also checked against the newest
#: version whose schemas kubernetes-validate ships.
MIN_KUBERNETES = "1.29"
#: Settings every orchestrator container must be given.
REQUIRED_ENV = {
    "ORCHESTRATOR_DATABASE_URL",
    "ORCHESTRATOR_BROKER_URL",
    "ORCHESTRATOR_KAFKA_BOOTSTRAP",
    "ORCHESTRATOR_KAFKA_GROUP",
    "ORCHESTRATOR_WORKFLOWS",
    "ORCHESTRATOR_API_TOKEN",
}
#: CLI commands the deployment runs that other work adds; a name here that the CLI does
#: not have yet is accepted, any other unknown command is a typo.
PLANNED_COMMANDS = {"consume", "web"}
HEALTHCHECK = ["python", "-m", "orchestrator.healthcheck"]


# -- helpers ----------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def check_cli_args(args: list[str]) -> None:
    """Fail unless `orchestrator ARGS` names a command and options the CLI accepts."""
    command: click.Command = cli
    words = list(args)
    path = []
    while isinstance(command, click.Group) and words:
        name = words.pop(0)
        path.append(name)
        if name not in command.commands:
            assert name in PLANNED_COMMANDS, f"`orchestrator {' '.join(path)}` is not a command"
            return
        command = command.commands[name]
    command.make_context(" ".join(path), list(words), resilient_parsing=False)


def check_health_command(argv: list[str]) -> None:
    """Fail unless ARGV runs the health check module with arguments it accepts."""
    assert argv[:3] == HEALTHCHECK, argv
    healthcheck_parser().parse_args(argv[3:])


def code_reads(name: str) -> bool:
    """Whether some module of the orchestrator package mentions setting `name`."""
    return any(f'"{name}"' in p.read_text() for p in (ROOT / "orchestrator").rglob("*.py"))


# -- Dockerfile -------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_builds_one_slim_non_root_image_for_every_role() -> None:
    instructions = dockerfile_instructions()
    args = dict(v.split("=", 1) for k, v in instructions if k == "ARG" and "=" in v)
    bases = [v.split()[0] for k, v in instructions if k == "FROM"]
    assert all(args.get(b.strip("${}"), b) == "python:3.11-slim" for b in bases), bases
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    users = [v for k, v in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert ("ENTRYPOINT", '["orchestrator"]') in final
    cmd = json.loads(next(v for k, v in final if k == "CMD"))
    check_cli_args(cmd)
    runs = " ".join(v for k, v in instructions if k == "RUN")
    assert re.search(r"pip install (--no-deps )?\.", runs), "the project is installed with pip"
    copied = " ".join(v for k, v in instructions if k == "COPY")
    for package in ("orchestrator", "workflows", "migrations", "web"):
        assert package in copied, f"package {package} is not copied into the image"


def test_dockerignore_keeps_tests_git_and_caches_out_of_the_build_context() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", "tests", "**/__pycache__", ".venv"} <= ignored
    needed = {"orchestrator", "workflows", "migrations", "web", "pyproject.toml", "README.md"}
    assert not ignored & needed


# -- compose.yaml -----------------------------------------------------------------------


def interpolate(value: Any) -> Any:
    """Compose's `${VAR:-default}` with no variable set: the default."""
    if isinstance(value, str):
        return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def built(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def test_compose_has_the_infrastructure_and_every_role(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "kafka", "migrate", "worker", "consumer", "web"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert set(built(compose)) == {"migrate", "worker", "consumer", "web"}


def test_compose_roles_run_the_one_image_with_their_command(compose: dict[str, Any]) -> None:
    services = built(compose)
    for name, service in services.items():
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        check_cli_args(service["command"])
    assert len({s["image"] for s in services.values()}) == 1
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["consumer"]["command"][0] == "consume"
    assert services["web"]["command"] == ["web", "--host", "0.0.0.0", "--port", "8080"]
    assert services["worker"]["command"][:3] == ["worker", "--hostname", "orchestrator@%h"]


def test_compose_dependencies_exist_and_their_conditions_can_be_met(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is not one-shot"
            else:
                assert condition == "service_started"
    for name in ("worker", "consumer", "web"):
        needs = services[name]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully", name
    assert services["consumer"]["depends_on"]["kafka"]["condition"] == "service_healthy"

    def reaches(start: str, seen: tuple[str, ...] = ()) -> None:
        assert start not in seen, f"dependency cycle: {' -> '.join((*seen, start))}"
        for target in services[start].get("depends_on", {}):
            reaches(target, (*seen, start))

    for name in services:
        reaches(name)


def test_compose_settings_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in built(compose).items():
        env = {k: str(interpolate(v)) for k, v in service["environment"].items()}
        assert REQUIRED_ENV <= set(env), f"{name} misses {REQUIRED_ENV - set(env)}"
        Settings.from_env(env)  # every value parses
        assert all(code_reads(k) for k in env), [k for k in env if not code_reads(k)]
        database = urlsplit(env["ORCHESTRATOR_DATABASE_URL"])
        assert database.scheme == "postgresql" and database.hostname in services
        pg_env = {k: str(interpolate(v)) for k, v in services["postgres"]["environment"].items()}
        assert (database.username, database.password, database.path) == (
            pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], "/" + pg_env["POSTGRES_DB"]
        )
        broker = urlsplit(env["ORCHESTRATOR_BROKER_URL"])
        assert broker.scheme == "redis" and broker.hostname == "redis"
        host, port = env["ORCHESTRATOR_KAFKA_BOOTSTRAP"].split(":")
        advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        assert f"//{host}:{port}" in advertised


def test_compose_kafka_is_a_single_kraft_node(compose: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in compose["services"]["kafka"]["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters.split("@")[0] == env["KAFKA_NODE_ID"] and "," not in voters
    listeners = dict(
        item.split("://")[0:2] for item in env["KAFKA_LISTENERS"].split(",")
    )
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env.get("CLUSTER_ID")
    assert "ZOOKEEPER" not in " ".join(env)


def test_compose_health_checks_run_real_commands(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        test = service.get("healthcheck", {}).get("test")
        if test and test[0] == "CMD" and test[1:4] == HEALTHCHECK:
            check_health_command(test[1:])
    assert compose["services"]["worker"]["healthcheck"]["test"][1:5] == [*HEALTHCHECK, "worker"]
    assert compose["services"]["web"]["healthcheck"]["test"][1:5] == [*HEALTHCHECK, "web"]


# -- Kubernetes -------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def resources() -> list[dict[str, Any]]:
    return [doc for f in kustomization()["resources"] for doc in load_yaml_documents(K8S / f)]


def named(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources() if r["kind"] == kind}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for r in resources():
        if r["kind"] in {"Deployment", "Job"}:
            yield r["metadata"]["name"], r["spec"]["template"]["spec"]


def test_kustomization_lists_every_manifest_in_the_folder() -> None:
    listed = kustomization()["resources"]
    present = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present
    assert len(set(listed)) == len(listed)


@pytest.mark.parametrize("version", [MIN_KUBERNETES, kubernetes_validate.utils.latest_version()])
def test_kubernetes_resources_validate_against_the_openapi_schemas(version: str) -> None:
    checked = 0
    for resource in resources():
        if resource["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(resource, version, strict=True)
        checked += 1
    assert checked >= 8


def test_scaled_objects_validate_against_the_keda_schema() -> None:
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    scaled = named("ScaledObject")
    assert set(scaled) == {"orchestrator-worker", "orchestrator-consumer"}
    for resource in scaled.values():
        jsonschema.validate(resource, schema, cls=jsonschema.Draft202012Validator)
        spec = resource["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


def test_the_keda_schema_refuses_what_keda_would() -> None:
    schema = json.loads(KEDA_SCHEMA.read_text())
    good = named("ScaledObject")["orchestrator-worker"]
    bad_metadata = json.loads(json.dumps(good))
    bad_metadata["spec"]["triggers"][0]["metadata"]["listLength"] = 20
    typo = json.loads(json.dumps(good))
    typo["spec"]["maxReplicas"] = typo["spec"].pop("maxReplicaCount")
    no_list = json.loads(json.dumps(good))
    del no_list["spec"]["triggers"][0]["metadata"]["listName"]
    for resource in (bad_metadata, typo, no_list):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(resource, schema, cls=jsonschema.Draft202012Validator)


def test_scaled_objects_target_the_deployments_they_scale() -> None:
    deployments = named("Deployment")
    for name, scaled in named("ScaledObject").items():
        target = scaled["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target["name"] in deployments, name
        replicas = deployments[target["name"]]["spec"]["replicas"]
        assert scaled["spec"]["minReplicaCount"] <= replicas <= scaled["spec"]["maxReplicaCount"]


def test_workers_three_replicas_scale_on_every_queue_the_examples_use() -> None:
    worker = named("Deployment")["orchestrator-worker"]
    assert worker["spec"]["replicas"] == 3
    triggers = named("ScaledObject")["orchestrator-worker"]["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    watched = {t["metadata"]["listName"] for t in triggers}
    queues = load_workflows(("workflows",)).queues
    assert queues <= watched, f"queues no trigger watches: {queues - watched}"
    secret = named("Secret")["orchestrator-secrets"]["stringData"]
    broker = urlsplit(secret["ORCHESTRATOR_BROKER_URL"])
    for trigger in triggers:
        assert trigger["metadata"]["address"] == f"{broker.hostname}:{broker.port}"
        assert trigger["metadata"]["databaseIndex"] == broker.path.strip("/")


def test_consumers_scale_on_lag_of_the_configured_group_never_past_the_partitions() -> None:
    settings = named("ConfigMap")["orchestrator-settings"]["data"]
    (trigger,) = named("ScaledObject")["orchestrator-consumer"]["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["bootstrapServers"] == settings["ORCHESTRATOR_KAFKA_BOOTSTRAP"]
    assert trigger["metadata"]["consumerGroup"] == settings["ORCHESTRATOR_KAFKA_GROUP"]
    assert trigger["metadata"]["allowIdleConsumers"] == "false"


def test_pods_get_all_settings_from_the_configmap_and_secret() -> None:
    config_maps, secrets = named("ConfigMap"), named("Secret")
    env: dict[str, str] = {}
    for cm in config_maps.values():
        env.update(cm["data"])
    for secret in secrets.values():
        env.update(secret["stringData"])
    assert REQUIRED_ENV <= set(env), REQUIRED_ENV - set(env)
    assert all(code_reads(k) for k in env), [k for k in env if not code_reads(k)]
    Settings.from_env(env)
    for name, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            refs = container["envFrom"]
            assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} <= set(config_maps)
            assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} <= set(secrets)
            assert len(refs) == 2, f"{name}/{container['name']} misses settings"


def test_the_web_pods_refuse_anonymous_reads() -> None:
    env: dict[str, str] = {}
    for cm in named("ConfigMap").values():
        env.update(cm["data"])
    for secret in named("Secret").values():
        env.update(secret["stringData"])
    settings = Settings.from_env(env)
    assert settings.web_read_auth, "deploy/kubernetes/ must set ORCHESTRATOR_WEB_READ_AUTH=1"
    assert settings.api_token, "closed reads need a token to open them"


def test_containers_run_real_commands_as_non_root() -> None:
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec.get("initContainers", []):
            script = container["command"][-1]
            check_health_command(shlex.split(script.split(";")[0].removeprefix("until ")))
        for container in spec["containers"]:
            assert container["image"] == "kafka-orchestrator"
            assert "command" not in container, "the image's entrypoint is `orchestrator`"
            check_cli_args(container["args"])
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
    images = {i["name"] for i in kustomization()["images"]}
    assert images == {"kafka-orchestrator"}


def test_probes_use_the_worker_health_command_and_the_web_healthz() -> None:
    deployments = named("Deployment")
    (worker,) = deployments["orchestrator-worker"]["spec"]["template"]["spec"]["containers"]
    assert worker["args"][:3] == ["worker", "--hostname", "orchestrator@%h"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = worker[probe]["exec"]["command"]
        check_health_command(command)
        assert command[3] == "worker"
        assert worker[probe]["timeoutSeconds"] > 5, "longer than the check's own timeout"
    (web,) = deployments["orchestrator-web"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in web["ports"]}
    assert web["args"] == ["web", "--host", "0.0.0.0", "--port", str(ports["http"])]
    for probe in ("livenessProbe", "readinessProbe"):
        assert web[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = named("Service")["orchestrator-web"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_selectors_match_their_pods() -> None:
    for resource in resources():
        if resource["kind"] == "Deployment":
            selector = resource["spec"]["selector"]["matchLabels"]
            labels = resource["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), resource["metadata"]["name"]
    deployments = named("Deployment")
    for service in named("Service").values():
        selector = service["spec"]["selector"]
        assert any(
            selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments.values()
        ), service["metadata"]["name"]


def test_migration_job_upgrades_the_schema_once() -> None:
    job = named("Job")["orchestrator-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}
    for name, spec in pod_specs():
        if name != "orchestrator-migrate":
            (init,) = spec["initContainers"]
            assert "database --at-head" in init["command"][-1], name
