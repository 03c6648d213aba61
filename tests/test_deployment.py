"""orchestration/cluster/: every deployment file parses, has the fields its system requires, and
runs this project's command with overrides that the real config accepts (composed, and for the
coarse stage planned by a dry run, exactly as the job would)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestration.config import compose_config, to_objects
from orchestration.grid import main as grid_main
from orchestration.pipeline import stage_overrides
from orchestration.spaces import STAGES

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "orchestration" / "cluster"
RAY_VERSION = re.search(r"^ray\[[^\]]*\]==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _check_command(argv: list[str], capsys) -> None:
    """`python <repo>/orchestration/grid.py --stage S --then T [overrides]`: the script exists, the stages
    are known, every stage's overrides compose into the typed config, and the first stage's dry run plans."""
    assert argv[0] == "python" and argv[1].replace("/app/", "") == "orchestration/grid.py", argv[:2]
    assert (REPO / "orchestration" / "grid.py").is_file()
    args = argv[2:]
    stage = args[args.index("--stage") + 1]
    then = args[args.index("--then") + 1].split(",") if "--then" in args else []
    assert stage in STAGES and all(s in STAGES for s in then)
    overrides = [a for a in args if not a.startswith("--") and a not in (stage, ",".join(then))]
    for s in [stage, *then]:
        cfg = to_objects(compose_config(stage_overrides(overrides, s), stage=s))
        assert cfg.ray.address == "auto" and cfg.ray.storage_path.startswith("/shared")
        assert cfg.mlflow.tracking_uri.startswith("http"), "trials on every node log to the shared server"
    assert to_objects(compose_config(stage_overrides(overrides, "coarse"), stage="coarse")).trial.gpus == 0.25
    assert grid_main(["--stage", stage, "--dry-run", *overrides]) == 0
    assert "1296 trials" in capsys.readouterr().out, "the coarse stage is the full factorial grid"


def test_raycluster_has_a_gpu_worker_group_shared_storage_and_credentials_from_a_secret():
    cluster, claim = _docs("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == RAY_VERSION
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0", "no trial on the driver's node"
    workers = spec["workerGroupSpecs"][0]
    gpu = workers["template"]["spec"]["containers"][0]
    assert int(gpu["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for container in (head, gpu):
        assert {"secretRef": {"name": "rev2net-mlflow"}} in container["envFrom"]
        assert any(m["mountPath"] == "/shared" for m in container["volumeMounts"])
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("name", ["kuberay/rayjob.yaml", "kuberay/raycronjob.yaml"])
def test_rayjob_and_raycronjob_run_the_pipeline_on_the_raycluster(name, capsys):
    (doc,) = _docs(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    if doc["kind"] == "RayCronJob":
        assert len(doc["spec"]["schedule"].split()) == 5, "a cron schedule"
        job = doc["spec"]["jobTemplate"]
    else:
        assert doc["kind"] == "RayJob"
        job = doc["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": _docs("kuberay/raycluster.yaml")[0]["metadata"]["name"]}
    _check_command(shlex.split(job["entrypoint"]), capsys)


def test_the_kubernetes_cronjob_submits_the_pipeline_once_at_a_time(capsys):
    (doc,) = _docs("kuberay/cronjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
    assert doc["spec"]["concurrencyPolicy"] == "Forbid" and len(doc["spec"]["schedule"].split()) == 5
    command = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "orchestration/submit.py"] and "--if-idle" in command
    options = dict(a[2:].split("=", 1) for a in command[2:] if a.startswith("--") and "=" in a)
    assert options["address"].endswith(":8265")
    overrides = [a for a in command[2:] if not a.startswith("--")]
    _check_command(["python", "orchestration/grid.py", "--stage", options["stage"], "--then", options["then"],
                    "ray.address=auto", *overrides], capsys)


def test_the_mlflow_deployment_runs_the_server_script_with_secrets_from_the_environment():
    deployment, service = _docs("kuberay/mlflow.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["bash", "orchestration/cluster/mlflow_server.sh"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "@" in env["MLFLOW_BACKEND_STORE_URI"] and ":" not in env["MLFLOW_BACKEND_STORE_URI"].split("//")[1].split("@")[0]
    assert env["MLFLOW_AUTH"] == "1" and env["MLFLOW_ALLOWED_HOSTS"]
    assert not any("PASSWORD" in k or "SECRET" in k for k in env), "secrets come from a Secret, not the manifest"
    assert {"secretRef": {"name": "rev2net-mlflow-server"}} in container["envFrom"]
    assert service["spec"]["ports"][0]["port"] == 5000


def test_the_server_script_refuses_passwords_in_the_store_uri_and_needs_admin_credentials_for_auth():
    script = CLUSTER / "mlflow_server.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    base = {"PATH": "/usr/bin:/bin", "MLFLOW_ARTIFACTS_DESTINATION": "/tmp/a", "MLFLOW_BIN": "false"}
    for env, message in [
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://u:pw@db/mlflow"}, "holds a password"),
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql://u@db/mlflow"}, "postgresql+psycopg2://"),
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://u@db/mlflow"}, "MLFLOW_AUTH_ADMIN_USERNAME"),
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://u@db/mlflow", "MLFLOW_AUTH": "0", "MLFLOW_HOST": "0.0.0.0"},
         "MLFLOW_ALLOWED_HOSTS"),
    ]:
        done = subprocess.run(["bash", str(script)], env={**base, **env}, capture_output=True, text=True)
        assert done.returncode != 0 and message in done.stderr, (env, done.stderr)


def test_the_slurm_script_runs_the_pipeline_through_symmetric_run(capsys):
    script = CLUSTER / "slurm" / "sweep.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
    assert directives["dependency"] == "singleton" and int(directives["gpus-per-node"]) >= 1
    command = " ".join(text.replace("\\\n", " ").split())
    assert "ray symmetric-run --address" in command and '--min-nodes "$SLURM_JOB_NUM_NODES"' in command
    defaults = dict(re.findall(r'^(\w+)="\$\{\1:-([^}]*)\}"', text, re.M))
    entry = command.split(" -- ", 1)[1]
    argv = [re.sub(r"\$(\w+)", lambda m: defaults.get(m.group(1), m.group(0)), a) for a in shlex.split(entry)]
    _check_command(argv, capsys)


def test_the_cluster_launcher_config_has_gpu_workers_and_installs_this_project():
    (doc,) = _docs("launcher/aws-gpu.yaml")
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type"):
        assert key in doc, key
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types and types[doc["head_node_type"]]["resources"]["GPU"] == 0
    gpu_types = [t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) > 0]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    assert any("requirements.txt" in c for c in doc["setup_commands"])
    assert any("ray start --head" in c for c in doc["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in doc["worker_start_ray_commands"])


def test_the_image_is_rays_at_the_pinned_version():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:(\S+?)-py311", text, re.M).group(1) == RAY_VERSION
    assert "pip install --no-cache-dir -r requirements.txt" in text
