"""cluster.yaml and its GCP twin pass Ray's own autoscaler checks and install the project's pins."""

from __future__ import annotations

import shlex
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
from ray.autoscaler.v2.utils import ResourceRequestUtil
from ray.core.generated.autoscaler_pb2 import ResourceRequestByCount

REPO = Path(__file__).resolve().parents[2]
CLUSTER_FILES = sorted(p.name for p in REPO.glob("cluster*.yaml"))


def load_cluster(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def installed_requirements(commands: list[str]) -> dict[str, Requirement]:
    """Requirements named by `pip install` / `uv pip install` commands (options skipped)."""
    found: dict[str, Requirement] = {}
    for command in commands:
        words = shlex.split(command, comments=True)
        if "install" not in words or "pip" not in " ".join(words):
            continue
        args = words[words.index("install") + 1 :]
        skip_next = False
        for word in args:
            if skip_next:
                skip_next = False
                continue
            if word in ("--python", "-p", "--index-url", "--extra-index-url", "-r", "-c"):
                skip_next = True
                continue
            if word.startswith("-") or word.startswith(("~", "/", ".")):
                continue  # a flag, or the project path installed with --no-deps
            req = Requirement(word)
            found[req.name.lower()] = req
    return found


def pin_mismatches(config: dict) -> list[str]:
    """How the setup commands' requirements differ from pyproject.toml's (empty when they agree).

    Every node installs every runtime dependency with pyproject's exact specifier; a package that
    pyproject does not declare may only appear in head_setup_commands (the autoscaler's cloud SDK).
    """
    expected = pyproject_requirements()
    on_every_node = installed_requirements(config.get("setup_commands", []))
    on_head = installed_requirements(config.get("head_setup_commands", []))
    problems = []
    for name, req in expected.items():
        # Test tools, and the optional extras' packages (cxr, timm, dicom, dicom-gpl) that the
        # dev extra pulls for the tests: a cluster that needs an extra adds it to its setup.
        dev_only = name in {
            "pytest", "pytest-timeout", "ruff", "moto", "boto3", "optuna-dashboard", "setuptools",
            "torchxrayvision", "timm", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg",
            "imagecodecs",
        }  # fmt: skip
        got = on_every_node.get(name) or on_head.get(name)
        if got is None:
            if not dev_only:
                problems.append(f"{name}: pyproject needs {req}, setup commands do not install it")
            continue
        if got.specifier != req.specifier:
            problems.append(
                f"{name}: pyproject pins {req.specifier}, setup installs {got.specifier}"
            )
        if not req.extras <= got.extras:
            problems.append(f"{name}: setup lacks extras {sorted(req.extras - got.extras)}")
    for name in sorted(set(on_every_node) - set(expected)):
        problems.append(f"{name}: installed on every node but not declared in pyproject.toml")
    return problems


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_config_passes_ray_schema_validation(name):
    config = prepare_config(load_cluster(name))
    # Raises jsonschema.ValidationError or ValueError on anything `ray up` would refuse.
    validate_config(config)


def test_aws_cluster_config_exists():
    # The AWS config is the documented one; the GCP twin is optional.
    assert "cluster.yaml" in CLUSTER_FILES


@pytest.mark.parametrize(
    "path, typo",
    [
        ((), "max_wokers"),
        ((), "idle_timeout_minute"),
        (("available_node_types", "gpu1_spot"), "min_worker"),
    ],
)
def test_misspelled_key_is_rejected_by_ray_schema(path, typo):
    config = load_cluster("cluster.yaml")
    section = config
    for key in path:
        section = section[key]
    section[typo] = 1
    # The schema refuses unknown keys at the top level and in each node type.
    with pytest.raises(jsonschema.ValidationError, match=typo):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_setup_commands_install_exactly_the_pyproject_pins(name):
    # torch/torchvision/ray versions on the cluster must be the ones the project was tested with.
    assert pin_mismatches(load_cluster(name)) == []


def test_pin_check_reports_a_drifted_pin():
    config = load_cluster("cluster.yaml")
    config["setup_commands"] = [
        c.replace("torch==2.14.1", "torch==2.14.0") for c in config["setup_commands"]
    ]
    # The pin check itself must be able to fail, or the test above proves nothing.
    assert any(p.startswith("torch:") for p in pin_mismatches(config))


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_setup_commands_install_the_mounted_project(name):
    config = load_cluster(name)
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    # The project copied by file_mounts is the one installed (its own deps come from the pins).
    assert any(
        "install" in c and "--no-deps" in c and f"-e {mount}" in c for c in config["setup_commands"]
    )


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_head_runs_the_driver_only_and_workers_have_gpus(name):
    config = prepare_config(load_cluster(name))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    # CPU 0 and no GPU: Tune can place no trial on the head node.
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    gpus = sorted({v["resources"]["GPU"] for v in workers.values()})
    # A one-GPU and a four-GPU machine type are offered.
    assert gpus == [1, 4]
    assert config["idle_timeout_minutes"] > 0
    assert sum(v["min_workers"] for v in workers.values()) == 0 < config["max_workers"]


def _launches(config: AutoscalingConfig, unavailable: set[str], gpus_wanted: int) -> dict:
    """Node types Ray's autoscaler v2 launches for `gpus_wanted` one-GPU trials."""
    scores = {node_type: 0.0 for node_type in unavailable}
    request = SchedulingRequest(
        disable_launch_config_check=True,
        node_type_configs=config.get_node_type_configs(),
        max_num_nodes=config.get_max_num_worker_nodes(),
        resource_requests=[
            ResourceRequestByCount(
                request=ResourceRequestUtil.make({"CPU": 1, "GPU": 1}), count=gpus_wanted
            )
        ],
        cloud_resource_availabilities=scores,
        recoverable_resource_availabilities=scores,
    )
    reply = ResourceDemandScheduler().schedule(request)
    return {launch.instance_type: launch.count for launch in reply.to_launch}


def is_spot(node_config: dict) -> bool:
    """A spot node in either provider's terms (EC2 market options, GCE provisioning model)."""
    aws = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    gcp = node_config.get("scheduling", {}).get("provisioningModel") == "SPOT"
    return aws or gcp


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_autoscaler_prefers_spot_and_falls_back_to_on_demand(name):
    config = AutoscalingConfig(load_cluster(name), skip_content_hash=True)
    types = config.get_node_type_configs()
    spot = {t for t in types if is_spot(config.get_cloud_node_config(t))}
    # Each GPU size has a spot type and an on-demand type.
    assert {types[t].resources["GPU"] for t in spot} == {1, 4}
    # With every type available, trials get spot GPUs.
    assert set(_launches(config, set(), 2)) <= spot
    # When spot launches have just failed, the same demand is met with on-demand GPUs.
    fallback = _launches(config, spot, 2)
    assert fallback and not set(fallback) & spot


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_project_copy_leaves_git_ignored_files_behind(name):
    config = load_cluster(name)
    ignored = (REPO / ".gitignore").read_text().split()
    # file_mounts rsyncs the checkout; .gitignore as a filter keeps the venv and caches (GBs) home.
    assert ".gitignore" in config["rsync_filter"]
    assert {".venv/", ".cache/"} <= set(ignored)


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_gpu_workers_carry_credentials_for_the_bucket(name):
    config = load_cluster(name)
    workers = {
        k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]
    }
    for node_type, spec in workers.items():
        node = spec["node_config"]
        # Trials upload checkpoints from the workers themselves, so each worker needs an
        # identity with access to the storage (an EC2 instance profile or a GCE service account).
        assert "IamInstanceProfile" in node or "serviceAccounts" in node, node_type
