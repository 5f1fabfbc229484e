"""deploy/ against the code: no container runtime, Kubernetes or cloud is reachable here, so the
image definition, the compose demo, the KubeRay manifests, the `ray up` configuration and the
systemd unit are checked rather than run. They parse; every `hefl` command, option and
environment variable they (and deploy/README.md) use exists; every `ray start` option exists;
Python and Ray versions agree with pyproject.toml and with each other; ports agree with the
CLI's and across files; images and pods run as a non-root user; only the coordinator holds the
job directory (the systemd unit: in its own state directory); and the compose health check,
run as it is written, tells a real coordinator's SERVING from its absence."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from coordinator.cli import API_PORT, HEALTH_PORT, METRICS_PORT
from coordinator.inprocess_pool import in_process_pool_factory
from coordinator.server import GRACE_S, SERVICE_NAME, Coordinator, CoordinatorConfig
from tools.cli import main
from tools.provision import provision

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
K8S_COORDINATOR = DEPLOY / "kuberay" / "coordinator.yaml"
RAY_UP = DEPLOY / "ray-up.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
SYSTEMD = DEPLOY / "hefl-coordinator.service"
GUIDE = DEPLOY / "README.md"
YAML_FILES = [COMPOSE, RAYCLUSTER, K8S_COORDINATOR, RAY_UP]
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
COMMAND_WRAPPERS = {"nohup", "exec", "sudo", "env"}


# ----- reading the files -------------------------------------------------------------------


def _documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _by_kind(path: Path, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _documents(path) if doc.get("kind") == kind]


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


class Dockerfile:
    """Instructions by stage, line continuations joined, ARG defaults known."""

    def __init__(self, text: str) -> None:
        joined = re.sub(r"\\\n", " ", text)
        self.args: dict[str, str] = {}
        self.stages: dict[str, list[tuple[str, str]]] = {}
        self.bases: dict[str, str] = {}
        stage = ""
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            instruction, _, rest = line.partition(" ")
            instruction = instruction.upper()
            if instruction == "FROM":
                image, _, name = rest.partition(" AS ")
                stage = name.strip()
                self.bases[stage] = self.expand(image.strip())
                self.stages[stage] = []
            elif instruction == "ARG" and "=" in rest and not stage:
                name, _, default = rest.partition("=")
                self.args[name.strip()] = default.strip()
            elif stage:
                self.stages[stage].append((instruction, rest.strip()))

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args[m.group(1)], text)

    def instructions(self, stage: str, kind: str) -> list[str]:
        return [rest for instruction, rest in self.stages[stage] if instruction == kind]


def _dockerfile() -> Dockerfile:
    return Dockerfile(DOCKERFILE.read_text())


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _lists(node: Any) -> Iterator[list[Any]]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _lists(value)
    elif isinstance(node, list):
        yield node
        for value in node:
            yield from _lists(value)


def _shell_commands(text: str, program: str) -> Iterator[list[str]]:
    """Every command line of ``program`` in shell text (environment assignments, nohup and the
    like before it; redirections and operators end it)."""
    for line in re.sub(r"\\\n", " ", text).splitlines():
        if program not in line:
            continue
        tokens = shlex.split(line, comments=True)
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token in SHELL_OPERATORS:
                yield from _command_of(segment, program)
                segment = []
            else:
                segment.append(token)


def _command_of(segment: list[str], program: str) -> Iterator[list[str]]:
    words = list(segment)
    while words and (re.match(r"^\w+=", words[0]) or words[0] in COMMAND_WRAPPERS):
        words.pop(0)
    # A bare name is a label or a user name (app.kubernetes.io/name: hefl), not a command.
    if len(words) > 1 and (words[0] == program or words[0].endswith(f"/{program}")):
        argv = [program]
        for word in words[1:]:
            if word[:1] in "<>" or re.match(r"^\d>", word):
                break
            argv.append(word)
        yield argv


def _markdown_shell(text: str) -> str:
    """The shell blocks of a Markdown file, and its inline code spans that are commands."""
    blocks = re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join([*blocks, *spans])


def _commands(path: Path, program: str) -> list[list[str]]:
    """Every ``program`` command line ``path`` holds, as argv."""
    found: list[list[str]] = []
    if path.suffix == ".yaml":
        for doc in _documents(path):
            for items in _lists(doc):
                words = [str(item) for item in items if isinstance(item, str | int)]
                if len(words) > 1 and len(words) == len(items) and words[0] == program:
                    found.append(words)
            for text in _strings(doc):
                found += _shell_commands(text, program)
    elif path == DOCKERFILE:
        dockerfile = _dockerfile()
        for stage in dockerfile.stages:
            for rest in dockerfile.instructions(stage, "CMD"):
                words = yaml.safe_load(rest)
                if words and words[0] == program:
                    found.append(words)
            for rest in dockerfile.instructions(stage, "RUN"):
                found += _shell_commands(rest, program)
    elif path == SYSTEMD:
        for line in path.read_text().splitlines():
            if line.startswith("ExecStart="):
                found += _shell_commands(line.removeprefix("ExecStart="), program)
    elif path.suffix == ".md":
        found += _shell_commands(_markdown_shell(path.read_text()), program)
    return found


def _option_value(argv: list[str], option: str) -> str | None:
    for i, word in enumerate(argv):
        if word == option:
            return argv[i + 1]
        if word.startswith(f"{option}="):
            return word.split("=", 1)[1]
    return None


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _hefl_command(path: Path, subcommand: str) -> list[list[str]]:
    return [argv for argv in _commands(path, "hefl") if argv[1:2] == [subcommand]]


# ----- what the CLI offers -----------------------------------------------------------------


def _options(command: click.Command) -> set[str]:
    return {
        opt
        for param in command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
    }


def _unknown_hefl_options(argv: list[str]) -> list[str]:
    """What in ``argv`` (``hefl [-v] COMMAND ...``) names no command or option of the CLI."""
    words = argv[1:]
    while words and words[0] in _options(main):
        words.pop(0)
    if not words:
        return ["no command"]
    command = main.commands.get(words[0])
    if command is None:
        return [f"no command {words[0]!r}"]
    known = _options(command) | {"--help"}
    return [
        f"hefl {words[0]} has no option {word.split('=')[0]}"
        for word in words[1:]
        if word.startswith("-") and word.split("=")[0] not in known
    ]


def _ray_start_options() -> set[str]:
    from ray.scripts.scripts import cli

    return _options(cli.commands["start"]) | {"--help"}


CHECKED = [COMPOSE, RAYCLUSTER, K8S_COORDINATOR, RAY_UP, DOCKERFILE, SYSTEMD, GUIDE]


# ----- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_every_yaml_file_parses(path):
    assert _documents(path)


def test_the_dockerfile_and_the_unit_parse():
    dockerfile = _dockerfile()
    assert {"coordinator", "party"} <= set(dockerfile.stages)
    assert {"PYTHON_VERSION", "RAY_VERSION", "HEFL_UID"} <= set(dockerfile.args)
    sections = re.findall(r"^\[(\w+)\]$", SYSTEMD.read_text(), flags=re.M)
    assert sections == ["Unit", "Service", "Install"]


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.name)
def test_every_hefl_command_and_option_exists(path):
    commands = _commands(path, "hefl")
    problems = [
        f"{shlex.join(argv)}: {p}" for argv in commands for p in _unknown_hefl_options(argv)
    ]
    assert problems == []


def test_the_files_use_the_commands_they_are_for():
    assert _hefl_command(COMPOSE, "coordinator") and _hefl_command(COMPOSE, "provision")
    assert len(_hefl_command(COMPOSE, "party")) == 3
    assert _hefl_command(K8S_COORDINATOR, "coordinator")
    assert _hefl_command(RAY_UP, "coordinator")
    assert _hefl_command(SYSTEMD, "coordinator")
    guide = {argv[1] for argv in _commands(GUIDE, "hefl") if len(argv) > 1}
    assert {"provision", "coordinator", "party"} <= guide


@pytest.mark.parametrize("path", [*CHECKED, ROOT / "README.md"], ids=lambda p: p.name)
def test_every_hefl_environment_variable_names_an_option(path):
    """Click reads ``HEFL_<COMMAND>_<PARAMETER NAME>``: the parameter's name, which is not
    always its option's (``--limits`` is ``limits_file``)."""
    problems = []
    for command, name in re.findall(r"\bHEFL_([A-Z]+)_([A-Z0-9_]+)", path.read_text()):
        known = main.commands.get(command.lower())
        if known is None:
            problems.append(f"HEFL_{command}_{name}: no command {command.lower()}")
        elif name.lower() not in {param.name for param in known.params}:
            problems.append(f"HEFL_{command}_{name}: hefl {command.lower()} reads no such variable")
    assert problems == []


@pytest.mark.parametrize("path", [COMPOSE, RAY_UP, GUIDE], ids=lambda p: p.name)
def test_every_ray_start_option_exists(path):
    known = _ray_start_options()
    used = [argv for argv in _commands(path, "ray") if argv[1:2] == ["start"]]
    assert used
    problems = [
        f"{shlex.join(argv)}: no option {word.split('=')[0]}"
        for argv in used
        for word in argv[2:]
        if word.startswith("-") and word.split("=")[0] not in known
    ]
    assert problems == []


def test_kuberay_start_parameters_are_ray_start_options():
    known = _ray_start_options()
    (cluster,) = _by_kind(RAYCLUSTER, "RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    used = {f"--{name}" for group in groups for name in group["rayStartParams"]}
    assert used - known == set()


def test_python_and_ray_versions_agree_with_pyproject():
    project = _pyproject()["project"]
    dockerfile = _dockerfile()
    python, ray = Version(dockerfile.args["PYTHON_VERSION"]), dockerfile.args["RAY_VERSION"]
    assert python in SpecifierSet(project["requires-python"])
    (ray_requirement,) = [
        r for r in project["optional-dependencies"]["coordinator"] if r.startswith("ray")
    ]
    assert Version(ray) in SpecifierSet(ray_requirement.removeprefix("ray"))
    pythons = {base for base in dockerfile.bases.values() if base.startswith("python:")}
    assert pythons == {f"python:{python}-slim"}

    (cluster,) = _by_kind(RAYCLUSTER, "RayCluster")
    assert cluster["spec"]["rayVersion"] == ray
    ray_up = _documents(RAY_UP)[0]
    assert ray_up["docker"]["image"] == f"rayproject/ray:{ray}-py{python.major}{python.minor}-cpu"
    pins = re.findall(r"ray==([\d.]+)", RAY_UP.read_text() + DOCKERFILE.read_text())
    assert pins and set(pins) == {ray}


def test_each_image_installs_its_roles_extra_only():
    dockerfile = _dockerfile()
    coordinator = " ".join(dockerfile.instructions("coordinator", "RUN"))
    party = " ".join(dockerfile.instructions("party", "RUN"))
    assert "[coordinator]" in coordinator and "[party]" not in coordinator
    assert "[party]" in party and "[coordinator]" not in party and "ray" not in party
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"coordinator", "party"} <= set(extras)


def test_images_and_pods_run_as_the_non_root_user():
    dockerfile = _dockerfile()
    uid = int(dockerfile.args["HEFL_UID"])
    assert uid != 0
    for stage in ("coordinator", "party"):
        users = dockerfile.instructions(stage, "USER")
        assert users and users[-1] not in {"root", "0"}, stage
    useradd = " ".join(dockerfile.instructions("base", "RUN"))
    assert re.search(r"useradd .*--uid \$\{HEFL_UID\} .*hefl", useradd)
    assert dockerfile.instructions("coordinator", "USER")[-1] == "hefl"

    pods = [
        _by_kind(K8S_COORDINATOR, "Deployment")[0]["spec"]["template"]["spec"],
        *(
            group["template"]["spec"]
            for cluster in _by_kind(RAYCLUSTER, "RayCluster")
            for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
        ),
    ]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
    for service in _documents(COMPOSE)[0]["services"].values():
        assert str(service.get("user", "hefl")) not in {"root", "0"}


def test_ports_agree_with_the_cli_and_across_files():
    dockerfile = _dockerfile()
    exposed = {
        int(p) for rest in dockerfile.instructions("coordinator", "EXPOSE") for p in rest.split()
    }
    assert {API_PORT, HEALTH_PORT, METRICS_PORT} <= exposed
    default_listen = next(
        p.default for p in main.commands["coordinator"].params if p.name == "listen"
    )
    assert _port(str(default_listen)) == API_PORT

    for path in (COMPOSE, K8S_COORDINATOR, RAY_UP):
        (argv,) = _hefl_command(path, "coordinator")
        ports = {
            option: _port(str(_option_value(argv, option)))
            for option in ("--listen", "--health-listen", "--metrics-listen")
        }
        assert ports == {
            "--listen": API_PORT,
            "--health-listen": HEALTH_PORT,
            "--metrics-listen": METRICS_PORT,
        }, path.name
    unit = SYSTEMD.read_text()
    assert f"HEFL_COORDINATOR_LISTEN=0.0.0.0:{API_PORT}" in unit
    assert f"HEFL_COORDINATOR_HEALTH_LISTEN=127.0.0.1:{HEALTH_PORT}" in unit
    assert f"HEFL_COORDINATOR_METRICS_LISTEN=127.0.0.1:{METRICS_PORT}" in unit


def test_compose_wires_its_services_together():
    services = _documents(COMPOSE)[0]["services"]
    (provisioned,) = _hefl_command(COMPOSE, "provision")
    hosts = [provisioned[i + 1] for i, w in enumerate(provisioned) if w == "--coordinator-host"]
    parties = [provisioned[i + 1] for i, w in enumerate(provisioned) if w == "--party"]
    coordinator = services["coordinator"]
    published = {int(str(p).rsplit(":", 1)[1]) for p in coordinator["ports"]}
    assert published == {API_PORT, HEALTH_PORT, METRICS_PORT}
    assert str(HEALTH_PORT) in "".join(coordinator["healthcheck"]["test"])

    for name in parties:
        argv = services[name]["command"]
        host, port = str(_option_value(argv, "--coordinator")).rsplit(":", 1)
        # Parties dial a name in the coordinator's certificate, at the API's port.
        assert host in services and host in hosts and int(port) == API_PORT
        assert _option_value(argv, "--roster") == ",".join(parties)
        kit = next(v for v in services[name]["volumes"] if isinstance(v, dict))
        assert kit["volume"]["subpath"] == name and kit["read_only"] is True
    key_holders = [name for name in parties if "--key-holder" in services[name]["command"]]
    assert len(key_holders) == 1

    ray_address = str(_option_value(coordinator["command"], "--ray-address"))
    match = re.fullmatch(r"ray://([\w-]+):(\d+)", ray_address)
    assert match and match.group(1) in services
    head = services[match.group(1)]["command"]
    assert _option_value(head, "--ray-client-server-port") == match.group(2)
    gcs = _option_value(services["ray-worker"]["command"], "--address")
    assert gcs == f"{match.group(1)}:{_option_value(head, '--port')}"
    for name in ("ray-head", "ray-worker", "coordinator"):
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token"


def test_kubernetes_probes_services_and_ray_address_agree():
    (deployment,) = _by_kind(K8S_COORDINATOR, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": API_PORT, "health": HEALTH_PORT, "metrics": METRICS_PORT}
    assert container["readinessProbe"]["grpc"] == {"port": HEALTH_PORT, "service": SERVICE_NAME}
    assert container["livenessProbe"]["grpc"]["port"] == HEALTH_PORT
    assert pod["terminationGracePeriodSeconds"] > GRACE_S
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for service in _by_kind(K8S_COORDINATOR, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
            assert port["port"] == ports[port["targetPort"]]
    (public,) = [
        s for s in _by_kind(K8S_COORDINATOR, "Service") if s["spec"]["type"] != "ClusterIP"
    ]
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["grpc"]

    (cluster,) = _by_kind(RAYCLUSTER, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    client_port = head["rayStartParams"]["ray-client-server-port"]
    # KubeRay names the head's Service <cluster>-head-svc.
    (argv,) = _hefl_command(K8S_COORDINATOR, "coordinator")
    expected = f"ray://{cluster['metadata']['name']}-head-svc:{client_port}"
    assert _option_value(argv, "--ray-address") == expected
    head_ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert int(client_port) in head_ports
    token = {e["name"]: e for e in container["env"]}["RAY_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": cluster["spec"]["authOptions"]["secretName"],
        "key": "auth_token",
    }


def _workdir(path: Path) -> str:
    """Where the coordinator of ``path`` keeps its job directories (its ``--workdir``)."""
    (argv,) = _hefl_command(path, "coordinator")
    workdir = _option_value(argv, "--workdir")
    assert workdir, f"{path.name}: the coordinator is given no --workdir"
    return str(workdir)


def _compose_mount_targets(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's mounts, target -> source (short and long syntax)."""
    targets = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            targets[volume["target"]] = volume["source"]
        else:
            source, target = str(volume).split(":")[:2]
            targets[target] = source
    return targets


def test_compose_mounts_the_job_directory_on_the_coordinator_only():
    """Ray workers get their shards through Ray's object store: no Ray service needs the
    coordinator's job directory, and none mounts it."""
    services = _documents(COMPOSE)[0]["services"]
    workdir = _workdir(COMPOSE)
    mounts = {name: _compose_mount_targets(service) for name, service in services.items()}
    work = mounts["coordinator"].get(workdir)
    assert work in _documents(COMPOSE)[0]["volumes"], "the coordinator keeps no job directory"
    ray_services = [
        name for name, service in services.items() if service["command"][:2] == ["ray", "start"]
    ]
    assert {"ray-head", "ray-worker"} <= set(ray_services)
    for name in ray_services:
        assert mounts[name] == {}, f"{name} mounts {mounts[name]}"
    # The job directory's volume is the coordinator's alone.
    users = {name for name, targets in mounts.items() if work in targets.values()}
    assert users == {"coordinator"}


def test_kuberay_mounts_the_job_directory_on_the_coordinator_only():
    """A ReadWriteOnce claim for the coordinator's Deployment; no Ray pod mounts anything."""
    workdir = _workdir(K8S_COORDINATOR)
    (deployment,) = _by_kind(K8S_COORDINATOR, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == workdir]
    assert not mount.get("readOnly", False)
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (claim,) = _by_kind(RAYCLUSTER, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # One coordinator at a time holds the claim, even during a rollout.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"

    (cluster,) = _by_kind(RAYCLUSTER, "RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    assert len(groups) >= 2
    for group in groups:
        spec = group["template"]["spec"]
        assert spec.get("volumes", []) == []
        for ray_container in [*spec["containers"], *spec.get("initContainers", [])]:
            assert ray_container.get("volumeMounts", []) == [], ray_container["name"]


def test_ray_up_keeps_the_job_directory_on_the_head_node_only():
    """The coordinator runs on the head (``--ray-address auto``) with its job directories in a
    local directory of the head VM; no node mounts a shared file system."""
    config = _documents(RAY_UP)[0]
    (argv,) = _hefl_command(RAY_UP, "coordinator")
    assert _option_value(argv, "--ray-address") == "auto"
    assert any("hefl coordinator" in command for command in config["head_start_ray_commands"])
    workdir = _workdir(RAY_UP)

    def mounts(options: list[str]) -> list[str]:
        words = shlex.split(" ".join(options))
        return [words[i + 1] for i, w in enumerate(words) if w in {"--volume", "-v", "--mount"}]

    docker = config["docker"]
    (head_mount,) = [m for m in mounts(docker["head_run_options"]) if m.split(":")[1] == workdir]
    host_dir = head_mount.split(":")[0]
    # Options for every node, or for the workers: none of hefl's.
    assert mounts(docker.get("run_options", [])) == []
    assert mounts(docker.get("worker_run_options", [])) == []
    # The head prepares its local directory; ray up runs the top-level initialization commands
    # on the head, and each worker type's own list (here empty) on its nodes.
    assert any(host_dir in command for command in config["initialization_commands"])
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            assert "docker" not in node_type
            continue
        assert node_type.get("initialization_commands") == [], name
        assert "worker_setup_commands" not in node_type or not any(
            host_dir in c for c in node_type["worker_setup_commands"]
        )
        assert "docker" not in node_type, name
    assert not re.search(r"\b(nfs4?|efs)\b", RAY_UP.read_text(), flags=re.I)


def _unit_settings(path: Path) -> dict[str, list[str]]:
    """A systemd unit's settings, ``Key=value`` lines by key (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith(("#", ";", "[")):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_systemd_unit_keeps_the_job_directory_in_its_own_state_directory():
    """The coordinator's machine alone holds the job directory: systemd's StateDirectory
    (/var/lib/NAME, created for the unit's user), not a shared mount."""
    settings = _unit_settings(SYSTEMD)
    (name,) = settings["StateDirectory"]
    assert settings["StateDirectoryMode"] == ["0700"]
    environment = dict(v.partition("=")[::2] for v in settings["Environment"])
    assert environment["HEFL_COORDINATOR_WORKDIR"] == f"/var/lib/{name}"
    assert "/mnt" not in SYSTEMD.read_text()
    guide = GUIDE.read_text()
    assert f"`/var/lib/{name}`" in guide and f"`StateDirectory={name}`" in guide


def test_the_kubernetes_kit_is_what_provision_writes(tmp_path):
    provision(tmp_path, parties=["a"], coordinator_hosts=("hefl.example.org",))
    kit = {path.name for path in (tmp_path / "coordinator").iterdir()}
    (deployment,) = _by_kind(K8S_COORDINATOR, "Deployment")
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    copied = set(re.findall(r"/kit-secret/([\w.]+)", init["command"][-1]))
    assert copied == kit
    # Only the private key goes in at 0600 (hefl refuses one that others can read).
    assert re.search(r"install -m 0600 /kit-secret/tls\.key ", init["command"][-1])


def test_the_compose_health_check_tells_serving_from_gone(tmp_path):
    """The check as written in compose.yaml, pointed at a real coordinator's probe port."""
    coordinator = _documents(COMPOSE)[0]["services"]["coordinator"]
    program, flag, code = coordinator["healthcheck"]["test"][1:]
    assert (program, flag) == ("python", "-c")
    running = Coordinator(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            workdir=tmp_path / "work",
            insecure=True,
            health_listen="127.0.0.1:0",
        ),
        in_process_pool_factory(),
        tls=None,
    )
    probe = code.replace(f"127.0.0.1:{HEALTH_PORT}", f"127.0.0.1:{running.health_port}")
    try:
        serving = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60)
    finally:
        running.stop(grace_s=0)
    assert serving.returncode == 0, serving.stderr
    gone = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60)
    assert gone.returncode != 0
