"""deploy/'s manifests against their formats' schemas, offline, and against each other and the project.

- deploy/kuberay/rayservice.yaml: schemas/rayservice-v1.json, made from KubeRay's CRD by schemas/make_schema.py
  with unknown fields forbidden (as the API server does); its serveConfigV2 against Ray Serve's own schema.
- deploy/compose.yaml: check-jsonschema's bundled compose-spec schema.
- deploy/ray-cluster.yaml: the cluster-launcher schema shipped inside the ray package, and `ray up`'s config
  preparation.
"""

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from llmdoctor.server.config import ServerSettings, env_name
from tests.deploy.schemas.make_schema import strict_schema

REPO_ROOT = Path(__file__).resolve().parents[2]
RAYSERVICE = REPO_ROOT / "deploy" / "kuberay" / "rayservice.yaml"
RAYSERVICE_SCHEMA = Path(__file__).with_name("schemas") / "rayservice-v1.json"
COMPOSE = REPO_ROOT / "deploy" / "compose.yaml"
RAY_CLUSTER = REPO_ROOT / "deploy" / "ray-cluster.yaml"
SERVE_APP = "llmdoctor.server.ray_serve:app"
# Read by deploy/docker-entrypoint.sh, not by the server.
ENTRYPOINT_VARIABLES = {"LLMDOCTOR_WAIT_FOR_RAY", "LLMDOCTOR_WAIT_TIMEOUT", "LLMDOCTOR_BIN"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def write_yaml(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def ray_pin() -> str:
    """The Ray version the `ray` extra pins, e.g. 2.60.0."""
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return re.fullmatch(r"ray\[[\w,]+\]==([\d.]+)", extras["ray"][0]).group(1)


def serve_config() -> dict:
    return yaml.safe_load(load(RAYSERVICE)["spec"]["serveConfigV2"])


def ray_cluster_schema() -> Path:
    # ray is a test dependency (deploy/install.sh --test installs the `ray` extra): missing, this fails
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin is not None, "ray is not installed: run deploy/install.sh --test"
    return Path(spec.origin).parent / "autoscaler" / "ray-schema.json"


# ---------------------------------------------------------------- RayService (KubeRay)


def test_rayservice_matches_the_kuberay_crd_schema(check_jsonschema):
    result = check_jsonschema("--schemafile", str(RAYSERVICE_SCHEMA), str(RAYSERVICE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rayservice_schema_rejects_a_misspelt_field(check_jsonschema, tmp_path):
    # the CRD itself allows unknown keys; make_schema.py closes the objects so that a typo fails here
    document = load(RAYSERVICE)
    head_container = document["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_container["imagePullPolicey"] = "Always"
    result = check_jsonschema("--schemafile", str(RAYSERVICE_SCHEMA), str(write_yaml(tmp_path / "typo.yaml", document)))
    assert result.returncode == 1 and "imagePullPolicey" in result.stdout


def test_rayservice_schema_names_its_kuberay_source():
    comment = json.loads(RAYSERVICE_SCHEMA.read_text())["$comment"]
    assert re.search(r"KubeRay v\d+\.\d+\.\d+ \(commit [0-9a-f]{40}\)", comment)


def test_strict_schema_closes_objects_but_not_maps_or_preserved_ones():
    crd_node = {"type": "object", "description": "d", "properties": {
        "described": {"type": "object", "properties": {"description": {"type": "string"}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "free": {"type": "object", "properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True},
        "when": {"type": "string", "nullable": True}}}
    schema = strict_schema(crd_node)
    fields = schema["properties"]
    assert schema["additionalProperties"] is False and "description" not in schema
    assert fields["described"]["additionalProperties"] is False and "description" in fields["described"]["properties"]
    assert fields["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in fields["free"]
    assert fields["when"]["type"] == ["string", "null"]


def test_rayservice_ray_version_is_the_one_the_ray_extra_pins():
    assert load(RAYSERVICE)["spec"]["rayClusterConfig"]["rayVersion"] == ray_pin()


def test_rayservice_runs_the_llmdoctor_serve_app_from_env_vars():
    (app,) = serve_config()["applications"]
    assert app["import_path"] == SERVE_APP
    assert {"LLMDOCTOR_MODEL", "LLMDOCTOR_REPLICAS", "LLMDOCTOR_DOCTOR"} <= set(app["runtime_env"]["env_vars"])


def test_rayservice_import_path_is_a_module_of_the_package():
    module, _, attribute = SERVE_APP.partition(":")
    spec = importlib.util.find_spec(module)  # finds the file without importing Ray
    assert spec is not None and spec.origin, f"{module} does not exist"
    assert re.search(rf"^{attribute}\b.*=", Path(spec.origin).read_text(), re.MULTILINE), f"{module} defines no {attribute}"


def test_rayservice_serve_config_passes_ray_serves_schema():
    schema = pytest.importorskip("ray.serve.schema", reason="ray[serve] is not installed")
    config = schema.ServeDeploySchema.model_validate(serve_config())
    # Serve ignores unknown keys (forward compatibility), so check the names against its fields too
    assert set(serve_config()) <= set(schema.ServeDeploySchema.model_fields)
    for app in serve_config()["applications"]:
        assert set(app) <= set(schema.ServeApplicationSchema.model_fields)
    assert config.applications[0].import_path == SERVE_APP


def test_rayservice_workers_each_ask_for_gpus_and_run_as_the_image_user():
    cluster = load(RAYSERVICE)["spec"]["rayClusterConfig"]
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
        assert container["image"].endswith(":cuda")


# ---------------------------------------------------------------- Docker Compose


def test_compose_matches_the_compose_spec(check_jsonschema):
    result = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_rejects_a_misspelt_field(check_jsonschema, tmp_path):
    document = load(COMPOSE)
    document["services"]["llmdoctor"]["shm_sise"] = document["services"]["llmdoctor"].pop("shm_size")
    typo = write_yaml(tmp_path / "typo.yaml", document)
    result = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(typo))
    assert result.returncode == 1 and "shm_sise" in result.stdout


def test_compose_gpu_service_reserves_nvidia_gpus_and_builds_the_cuda_target():
    service = load(COMPOSE)["services"]["llmdoctor"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert service["build"] == {"context": "..", "target": "cuda"} and "healthcheck" in service


def test_compose_cpu_service_is_a_profile_without_gpus():
    service = load(COMPOSE)["services"]["llmdoctor-cpu"]
    assert service["profiles"] == ["cpu"] and service["build"]["target"] == "cpu" and "deploy" not in service


def test_compose_builds_from_the_repository_root():
    for service in load(COMPOSE)["services"].values():
        assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").is_file()


# ---------------------------------------------------------------- Ray cluster launcher (`ray up`)


def test_ray_cluster_matches_the_launcher_schema(check_jsonschema):
    result = check_jsonschema("--schemafile", str(ray_cluster_schema()), str(RAY_CLUSTER))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ray_cluster_schema_rejects_a_misspelt_field(check_jsonschema, tmp_path):
    document = load(RAY_CLUSTER)
    document["docker"]["run_option"] = document["docker"].pop("run_options")
    typo = write_yaml(tmp_path / "typo.yaml", document)
    result = check_jsonschema("--schemafile", str(ray_cluster_schema()), str(typo))
    assert result.returncode == 1 and "run_option" in result.stdout


def test_ray_cluster_passes_ray_ups_own_preparation():
    util = pytest.importorskip("ray.autoscaler._private.util", reason="ray is not installed")
    config = util.prepare_config(load(RAY_CLUSTER))  # what `ray up` does before it starts anything
    util.validate_config(config)
    (node_type,) = config["available_node_types"].values()
    assert node_type["min_workers"] == len(config["provider"]["worker_ips"])  # every listed machine joins


def test_ray_cluster_head_starts_llmdoctor_serve_on_the_cluster():
    (serve,) = [c for c in load(RAY_CLUSTER)["head_start_ray_commands"] if "llmdoctor serve" in c]
    assert re.search(r"--replicas \d+", serve) and "--ray-address auto" in serve and "--host 0.0.0.0" in serve


# ---------------------------------------------------------------- all three


def llmdoctor_variables_set_by_deploy_files() -> dict[str, set[str]]:
    """LLMDOCTOR_* names each manifest hands to the server, by file name."""
    cluster = load(RAYSERVICE)["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    container_env = {e["name"] for pod in pods for c in pod["template"]["spec"]["containers"] for e in c.get("env", [])}
    docker_options = load(RAY_CLUSTER)["docker"]["run_options"]
    compose_env = {entry.split("=")[0] for service in load(COMPOSE)["services"].values()
                   for entry in service["environment"]}
    return {
        "rayservice.yaml": set(serve_config()["applications"][0]["runtime_env"]["env_vars"]) | container_env,
        "compose.yaml": compose_env,
        "ray-cluster.yaml": set(re.findall(r"-e (LLMDOCTOR_\w+)=", " ".join(docker_options))),
    }


def test_deploy_files_set_only_variables_llmdoctor_reads():
    known = {env_name(name) for name in ServerSettings.model_fields} | ENTRYPOINT_VARIABLES
    unknown = [f"{file}: {name}" for file, names in llmdoctor_variables_set_by_deploy_files().items()
               for name in sorted(names - known)]
    assert unknown == [], "set by deploy/, read by no server setting (server/config.py)"
