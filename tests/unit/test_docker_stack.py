"""The container stack, read as files: docker/compose.yaml and the Dockerfiles it builds.

Nothing here builds or runs a container. These checks catch what would otherwise fail only at deploy time:
a variable the project never reads, a COPY of a path that moved, an image that floats, a process running as
root, a service nobody can tell is healthy.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.errors import InvalidParameters
from jobs.http.auth import check_bind, parse_tokens
from jobs.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"

SERVICES = ("redis", "postgres", "s3", "s3-init", "migrate", "worker", "flower", "api")
#: Started only with `--profile monitoring`.
MONITORING = ("metrics", "prometheus", "grafana")
#: Long-running services whose health others wait on or an operator watches.
HEALTH_CHECKED = ("redis", "postgres", "s3", "worker", "flower", "api", *MONITORING)
#: Variables of third-party images and tools that a service may set besides the project's settings.
STANDARD_VARIABLES = frozenset(
    {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "CUDA_VISIBLE_DEVICES", "REDISCLI_AUTH"}
)
STANDARD_PREFIXES = ("AWS_", "FLOWER_", "POSTGRES_", "MINIO_", "NVIDIA_", "HF_", "PIP_", "GF_")
SETTINGS_VARIABLES = frozenset(f"OVIS_BATCH_{name.upper()}" for name in Settings.model_fields)


# -- reading the files ---------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One FROM ... stage of a Dockerfile, with the instructions under it."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, instruction: str) -> list[str]:
        """The arguments of each `instruction` in this stage, in order."""
        return [args for name, args in self.instructions if name == instruction]


def read_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped, FROM's ARGs resolved."""
    text = re.sub(r"\\\n", " ", path.read_text())
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "ARG" and not stages:
            arg_name, _, default = args.partition("=")
            global_args[arg_name] = default.strip("\"'")
        elif instruction == "FROM":
            parts = [word for word in args.split() if not word.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), parts[0])
            stage_name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=stage_name))
        elif stages:
            stages[-1].instructions.append((instruction, args))
    assert stages, f"{path} has no FROM"
    return stages


def exec_or_shell_words(args: str) -> list[str]:
    """The words of an instruction in exec (JSON) or shell form."""
    if args.startswith("["):
        words: list[str] = json.loads(args)
        return words
    return shlex.split(args)


def env_names(args: str) -> list[str]:
    """Names set by one ENV instruction (`ENV A=1 B=2` or the legacy `ENV A 1`)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return [words[0]]
    return [word.split("=", 1)[0] for word in words]


def load_compose() -> dict[str, Any]:
    """compose.yaml, with its anchors and merge keys resolved."""
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return compose


def services() -> dict[str, dict[str, Any]]:
    """The compose services by name."""
    found: dict[str, dict[str, Any]] = load_compose()["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, in list (`- A=1`) or mapping form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def command_words(command: str | list[str] | None) -> list[str]:
    """A compose command (string or list form) as a list of words."""
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """The services a service waits for, with the condition of each (list or mapping form)."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: "service_started" for name in depends_on}
    return {name: spec.get("condition", "service_started") for name, spec in depends_on.items()}


def option(command: list[str], name: str) -> str | None:
    """The value after `name` in a command line."""
    return command[command.index(name) + 1] if name in command[:-1] else None


def read_only_mounts(service: dict[str, Any]) -> list[str]:
    """Container paths of a service's read-only volumes (short `src:dst:ro` or long syntax)."""
    targets = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("read_only"):
                targets.append(volume["target"])
        elif str(volume).endswith(":ro"):
            targets.append(str(volume).removesuffix(":ro").rsplit(":", 1)[1])
    return targets


def build_of(service: dict[str, Any]) -> tuple[Path, Path] | None:
    """(context, Dockerfile) of a service built from this repository, or None for a pulled image."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")


def built_services() -> dict[str, tuple[Path, Path]]:
    """(context, Dockerfile) of each service built from this repository."""
    return {name: build for name, service in services().items() if (build := build_of(service)) is not None}


def dockerfiles() -> dict[Path, Path]:
    """Every Dockerfile the compose file builds, with its build context."""
    return {dockerfile: context for context, dockerfile in built_services().values()}


def is_pinned(image: str) -> bool:
    """True for an image named with a digest or with a tag other than `latest`."""
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    return bool(tag) and tag != "latest" and "$" not in image


def dockerignored(path: str, context: Path) -> bool:
    """True if the context's .dockerignore keeps `path` (relative to the context) out of the build."""
    ignore_file = context / ".dockerignore"
    if not ignore_file.exists():
        return False
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in ignore_file.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/").removeprefix("**/")
        if any(fnmatch.fnmatch(candidate, pattern) for candidate in candidates):
            ignored = not negated
    return ignored


# -- the checks ----------------------------------------------------------------------------------------------
def test_compose_has_the_whole_stack() -> None:
    missing = set(SERVICES) - set(services())
    assert not missing, f"compose.yaml lacks services {sorted(missing)}"


def test_every_ovis_batch_variable_is_a_setting() -> None:
    found: list[tuple[str, str]] = [
        (f"compose service {name}", variable)
        for name, service in services().items()
        for variable in environment(service)
    ]
    for dockerfile in dockerfiles():
        for stage in read_dockerfile(dockerfile):
            for args in stage.args_of("ENV"):
                found += [(dockerfile.name, variable) for variable in env_names(args)]

    assert found, "no environment variables found: the parser is broken"
    unknown = [
        (where, variable)
        for where, variable in found
        if variable not in SETTINGS_VARIABLES
        and variable not in STANDARD_VARIABLES
        and not variable.startswith(STANDARD_PREFIXES)
    ]
    assert not unknown, (
        f"variables the project does not read: {unknown}; "
        "settings are OVIS_BATCH_<field of jobs.settings.Settings, upper-cased>"
    )


def test_every_copied_path_exists_in_the_build_context() -> None:
    checked = 0
    for dockerfile, context in dockerfiles().items():
        assert dockerfile.is_file(), f"compose builds from {dockerfile}, which does not exist"
        for stage in read_dockerfile(dockerfile):
            for args in stage.args_of("COPY") + stage.args_of("ADD"):
                words = exec_or_shell_words(args)
                if any(word.startswith("--from") for word in words):
                    continue  # from another stage or image, not from the context
                sources = [word for word in words if not word.startswith("--")][:-1]
                for source in sources:
                    checked += 1
                    assert list(context.glob(source)), f"{dockerfile.name} copies {source}: not in {context}"
                    assert not dockerignored(source, context), (
                        f"{dockerfile.name} copies {source}, which .dockerignore leaves out of the context"
                    )
    assert checked, "no COPY found: the parser is broken"


def test_depends_on_names_services_that_exist() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dependency, condition in dependencies(service).items():
            assert dependency in all_services, f"{name} depends on {dependency}, which is not a service"
            if condition == "service_healthy":
                assert has_healthcheck(dependency), f"{name} waits for {dependency} healthy: it has no check"


def test_worker_waits_for_schema_bucket_and_servers() -> None:
    assert dependencies(services()["worker"]) == {
        "migrate": "service_completed_successfully",
        "s3-init": "service_completed_successfully",
        "redis": "service_healthy",
        "postgres": "service_healthy",
    }


def test_every_image_is_pinned() -> None:
    images = [(f"compose service {name}", s["image"]) for name, s in services().items() if "image" in s]
    for dockerfile in dockerfiles():
        stages = read_dockerfile(dockerfile)
        names = {stage.name for stage in stages if stage.name}
        images += [(dockerfile.name, stage.image) for stage in stages if stage.image not in names]

    assert len(images) >= len(SERVICES)
    floating = [(where, image) for where, image in images if not is_pinned(image)]
    assert not floating, f"images without a fixed tag or digest: {floating}"


@pytest.mark.parametrize("name", ["s3-init", "migrate", "worker", "flower", "api", "metrics"])
def test_project_services_run_as_a_non_root_user(name: str) -> None:
    service = services()[name]
    build = build_of(service)
    assert build is not None, f"{name} should be built from this repository"
    users = read_dockerfile(build[1])[-1].args_of("USER")

    assert users, f"{build[1].name} sets no USER: {name} would run as root"
    user = str(service.get("user", users[-1]))
    assert user.split(":")[0] not in {"root", "0"}, f"{name} runs as {user}"


def has_healthcheck(name: str) -> bool:
    """True if the service has a health check of its own or inherits one from the image it builds."""
    service = services()[name]
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False) and bool(check.get("test"))
    build = build_of(service)
    if build is None:
        return False
    checks = read_dockerfile(build[1])[-1].args_of("HEALTHCHECK")
    return bool(checks) and checks[-1].strip().upper() != "NONE"


@pytest.mark.parametrize("name", HEALTH_CHECKED)
def test_long_running_services_have_a_healthcheck(name: str) -> None:
    assert has_healthcheck(name), f"{name} has no health check, in compose.yaml or in its image"


def test_worker_reserves_a_gpu() -> None:
    devices = services()["worker"]["deploy"]["resources"]["reservations"]["devices"]

    gpus = [
        device for device in devices if device.get("driver") == "nvidia" and "gpu" in device["capabilities"]
    ]
    assert gpus, f"the worker reserves no NVIDIA GPU: {devices}"


def test_worker_runs_the_real_model_from_read_only_weights() -> None:
    worker = services()["worker"]
    env = environment(worker)

    assert env["OVIS_BATCH_BACKEND"] == "ovis-u1"
    assert env["OVIS_BATCH_MODEL_PATH"] in read_only_mounts(worker), "the weights are not mounted read-only"


def test_redis_keeps_messages() -> None:
    command = command_words(services()["redis"].get("command"))

    assert option(command, "--maxmemory-policy") == "noeviction", "Redis would evict queued messages"
    assert option(command, "--appendonly") == "yes", "Redis would lose queued messages on restart"


def test_flower_requires_basic_auth() -> None:
    flower = services()["flower"]
    env = environment(flower)
    auth = env.get("OVIS_BATCH_FLOWER_BASIC_AUTH") or env.get("FLOWER_BASIC_AUTH")

    assert auth, "Flower would be open to anyone who reaches port 5555"
    assert ":" in auth, "basic auth is user:password"


@pytest.mark.parametrize("name", ["s3-init", "migrate", "worker", "cli", "api"])
def test_project_services_reach_postgres_redis_and_s3(name: str) -> None:
    env = environment(services()[name])

    assert env["OVIS_BATCH_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["OVIS_BATCH_BROKER_URL"].startswith("redis://")
    assert env["OVIS_BATCH_STORAGE_URL"].startswith("s3://")
    assert env["OVIS_BATCH_S3_ENDPOINT_URL"].startswith("http")
    assert env["OVIS_BATCH_S3_ADDRESSING_STYLE"] == "path"


def test_flower_reaches_the_broker() -> None:
    assert environment(services()["flower"])["OVIS_BATCH_BROKER_URL"].startswith("redis://")


# -- the HTTP API --------------------------------------------------------------------------------------------
PYPROJECT = REPO / "pyproject.toml"


def test_api_serves_on_every_interface_of_its_container_and_waits_like_the_worker() -> None:
    api = services()["api"]
    command = command_words(api.get("command"))

    assert "entrypoint" not in api  # the image's: ovis-batch
    assert command[0] == "serve"
    assert option(command, "--host") == "0.0.0.0"
    assert dependencies(api) == dependencies(services()["worker"])


def test_api_needs_tokens_given_at_deploy_time() -> None:
    # On 0.0.0.0 `serve` refuses to start without a token; the compose file passes the operator's entries
    # through and holds none of its own (a hash committed here would be a token anyone could look up).
    command = command_words(services()["api"].get("command"))
    with pytest.raises(InvalidParameters, match="OVIS_BATCH_API_TOKENS"):
        check_bind(str(option(command, "--host")), parse_tokens([]))

    tokens = environment(services()["api"])["OVIS_BATCH_API_TOKENS"]
    assert re.fullmatch(r"\$\{OVIS_BATCH_API_TOKENS(:?-)?\}", tokens), (
        f"OVIS_BATCH_API_TOKENS should come from the environment or docker/.env, not {tokens!r}"
    )


def test_api_port_is_published_and_health_checked() -> None:
    api = services()["api"]
    port = option(command_words(api.get("command")), "--port")
    [published] = api["ports"]
    check = " ".join(api["healthcheck"]["test"])

    assert str(published).rsplit(":", 1)[1] == port
    assert f"http://127.0.0.1:{port}/v1/health" in check


def test_api_health_check_asks_the_open_health_endpoint() -> None:
    from jobs.http.openapi import DOCUMENT

    health = json.loads(DOCUMENT.read_text(encoding="utf-8"))["paths"]["/v1/health"]["get"]

    assert not health.get("security"), "/v1/health asks for a token: the health check would always fail"


def test_api_image_installs_the_web_server() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() for requirement in dependencies}
    build = build_of(services()["api"])
    assert build is not None, "the api service should be built from this repository"
    runs = " ".join(read_dockerfile(build[1])[-1].args_of("RUN"))

    assert {"fastapi", "uvicorn"} <= names
    assert "['project']['dependencies']" in runs and "pip install ." in runs, (
        f"{build[1].name} does not install the project's dependencies"
    )


# -- monitoring ----------------------------------------------------------------------------------------------
PROMETHEUS_FILE = COMPOSE_FILE.parent / "prometheus.yml"


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> file or folder of this repository, for a service's bind mounts of relative paths."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE_FILE.parent / source).resolve()
    return mounts


def scrape_targets() -> dict[str, tuple[str, int]]:
    """Prometheus job name -> (host, port) of its one target."""
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    targets = {}
    for job in config["scrape_configs"]:
        [static] = job["static_configs"]
        [target] = static["targets"]
        host, port = target.rsplit(":", 1)
        targets[job["job_name"]] = (host, int(port))
    return targets


def test_monitoring_is_optional() -> None:
    all_services = services()
    for name in MONITORING:
        assert all_services[name].get("profiles") == ["monitoring"], f"{name} would start with every `up`"
    for name in SERVICES:
        assert "monitoring" not in all_services[name].get("profiles", []), (
            f"{name} needs --profile monitoring"
        )


def test_published_ports_listen_on_localhost_only() -> None:
    published = [
        (name, str(port)) for name, service in services().items() for port in service.get("ports", [])
    ]

    assert published
    exposed = [(name, port) for name, port in published if not port.startswith("127.0.0.1:")]
    assert not exposed, f"ports open on every interface: {exposed}"


def test_mounted_configuration_is_in_the_repository() -> None:
    checked = 0
    for name in MONITORING:
        for target, source in bind_mounts(services()[name]).items():
            checked += 1
            assert source.exists(), f"{name} mounts {source} at {target}: it does not exist"
    assert checked >= 3, "the parser found no bind mounts"


def test_prometheus_scrapes_the_metrics_endpoint_and_flower() -> None:
    targets = scrape_targets()
    all_services = services()
    metrics = all_services["metrics"]
    command = command_words(metrics.get("command"))

    assert set(targets) == {"ovis-batch", "flower"}
    host, port = targets["ovis-batch"]
    assert host == "metrics"
    # The endpoint listens on every interface of its container, on the port scraped and health-checked.
    assert command == ["metrics", "--serve", str(port), "--address", "0.0.0.0"]
    assert f"127.0.0.1:{port}/" in " ".join(metrics["healthcheck"]["test"])
    assert targets["flower"] == ("flower", int(environment(all_services["flower"])["OVIS_BATCH_FLOWER_PORT"]))
    assert PROMETHEUS_FILE.resolve() in bind_mounts(all_services["prometheus"]).values()


def test_metrics_service_runs_the_metrics_command_with_the_database_and_broker_only() -> None:
    metrics = services()["metrics"]

    assert "entrypoint" not in metrics  # the image's: ovis-batch
    env = environment(metrics)
    assert env["OVIS_BATCH_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["OVIS_BATCH_BROKER_URL"].startswith("redis://")
    assert not [name for name in env if name.startswith("OVIS_BATCH_S3_")], "it needs no storage secrets"


def test_grafana_gets_the_datasource_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "ovis-batch.yaml").read_text())["providers"]
    dashboard = COMPOSE_FILE.parent / "grafana" / "ovis-batch.json"

    assert datasource["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in services()["prometheus"]["ports"]
    assert mounts[f"{provider['options']['path']}/ovis-batch.json"] == dashboard.resolve()
    assert json.loads(dashboard.read_text())["uid"] == "ovis-batch"
    assert environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"], "Grafana would keep admin:admin"
