"""orchestration/submit.py: the job's command, its runtime environment (what Ray uploads, checked by
packaging a working directory with Ray's own code), `--if-idle`, and a real pipeline job through
Ray's job server (ray[default]) on a local cluster."""

from __future__ import annotations

import shlex
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestration import submit
from sweep_helpers import SIM, parent_runs, small_spaces, tiny_overrides

REPO = Path(__file__).resolve().parent.parent


def test_the_job_runs_grid_py_on_the_cluster_it_was_submitted_to():
    entry = submit.entrypoint("coarse", ["data=ucf101", "search.variants=[rev2net,i3d]", "coarse:trial.gpus=0.25"],
                              then=["fine", "ablation"])
    assert shlex.split(entry) == ["python", "orchestration/grid.py", "--stage", "coarse", "--then", "fine,ablation",
                                  "ray.address=auto", "data=ucf101", "search.variants=[rev2net,i3d]",
                                  "coarse:trial.gpus=0.25"]
    assert "ray.address=auto" not in submit.entrypoint("coarse", ["ray.address=ray://head:10001"]), \
        "an explicit address is kept"
    assert shlex.split(submit.entrypoint("fine", [], python="/opt/venv/bin/python"))[:2] == \
        ["/opt/venv/bin/python", "orchestration/grid.py"]


def test_runtime_env_has_the_repository_and_only_the_credentials_that_are_set(monkeypatch, tmp_path):
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    env = submit.runtime_env()
    assert env["working_dir"] == str(REPO) and "env_vars" not in env and "pip" not in env
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sweeper")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    assert submit.runtime_env()["env_vars"] == {"MLFLOW_TRACKING_USERNAME": "sweeper",
                                                "MLFLOW_TRACKING_PASSWORD": "s3cret"}
    req = tmp_path / "requirements.txt"
    req.write_text("# pinned\ntorch==2.13.0\nray[tune]==2.60.0  # the scheduler\n-e .\n--extra-index-url x\n")
    assert submit.runtime_env(pip=submit.pip_packages(req))["pip"] == {"packages": ["torch==2.13.0", "ray[tune]==2.60.0"],
                                                                        "pip_check": False}


def test_the_upload_leaves_out_data_environments_and_stores(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    work = tmp_path / "repo"
    files = ["orchestration/grid.py", "rev2net/data/datasets.py", "search_spaces/coarse.yaml", "requirements.txt",
             "data/UCF101/v_x.avi", "ray_results/exp/state.json", ".venv/bin/python", ".git/HEAD", "mlflow.db",
             "mlartifacts/1/a.txt", "rev2net/__pycache__/x.cpython-311.pyc", "outputs/run.log"]
    for f in files:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text("x")
    package = tmp_path / "package.zip"
    create_package(str(work), package, include_gitignore=True, excludes=submit.runtime_env(work)["excludes"])
    uploaded = {n for n in zipfile.ZipFile(package).namelist() if not n.endswith("/")}
    assert uploaded == {"orchestration/grid.py", "rev2net/data/datasets.py", "search_spaces/coarse.yaml",
                        "requirements.txt"}


@dataclass
class _Job:
    submission_id: str
    status: str
    metadata: dict


@dataclass
class _Client:
    """The three calls submit() makes of ray.job_submission.JobSubmissionClient."""

    jobs: list = field(default_factory=list)

    def list_jobs(self):
        return self.jobs

    def submit_job(self, *, entrypoint, runtime_env, submission_id, metadata, entrypoint_num_cpus):
        self.jobs.append(_Job(submission_id, "RUNNING", metadata))
        self.last = dict(entrypoint=entrypoint, runtime_env=runtime_env)
        return submission_id


def test_if_idle_submits_nothing_while_the_same_command_runs():
    client = _Client()
    first, new = submit.submit(client, "coarse", ["data=ucf101"], then=["fine"], if_idle=True)
    assert new and first.startswith("rev2net-coarse-fine-") and client.last["entrypoint"].startswith("python orchestration")
    assert submit.submit(client, "coarse", ["data=ucf101"], then=["fine"], if_idle=True) == (first, False)
    other, new = submit.submit(client, "coarse", ["data=hmdb51"], then=["fine"], if_idle=True)
    assert new and other != first, "another command is another job"
    client.jobs[0].status = "SUCCEEDED"
    assert submit.submit(client, "coarse", ["data=ucf101"], then=["fine"], if_idle=True)[1], "the last run ended"


def test_a_head_without_its_job_agent_yet_is_asked_again_and_other_errors_are_not(monkeypatch):
    """A head that has just started answers 500 "No available agent ..." until its job agent is up:
    submit() asks again (the job was not created), once per 2 s; any other error stops it at once."""
    monkeypatch.setattr(submit, "AGENT_WAIT_S", 30.0)
    monkeypatch.setattr("time.sleep", lambda s: None)  # tenacity's wait, not the test's time

    class Starting(_Client):
        refusals = 2

        def submit_job(self, **kwargs):
            if self.refusals:
                self.refusals -= 1
                raise RuntimeError("Request failed with status code 500: No available agent to submit job, please "
                                   "try again later..")
            return super().submit_job(**kwargs)

    client = Starting()
    job_id, new = submit.submit(client, "coarse", ["data=ucf101"])
    assert new and client.refusals == 0 and [j.submission_id for j in client.jobs] == [job_id]

    class Broken(_Client):
        calls = 0

        def submit_job(self, **kwargs):
            self.calls += 1
            raise RuntimeError("Request failed with status code 400: bad runtime_env")

    broken = Broken()
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        submit.submit(broken, "coarse", ["data=ucf101"])
    assert broken.calls == 1


@pytest.mark.slow
def test_a_pipeline_job_on_a_local_cluster(tmp_path, synthetic_root, capsys):
    import socket

    import ray
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobSubmissionClient

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    port = free_port()
    if ray.is_initialized():
        ray.shutdown()
    # A head's job agent listens on 52365 unless told otherwise; a Ray runtime of another test
    # worker holds that port, and the job server then answers "No available agent" for good.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
        "dashboard_agent_listen_port": free_port()})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{port}")
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        overrides = tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={small_spaces(tmp_path)}", SIM,
                                   "trainer.max_epochs=1", "+trial.runner_args.epoch_s=1")
        job_id, new = submit.submit(client, "coarse", overrides, then=["fine"], python=sys.executable, if_idle=True)
        assert new
        assert submit.submit(client, "coarse", overrides, then=["fine"], python=sys.executable, if_idle=True) == \
            (job_id, False), "a second scheduled submission while the first runs adds nothing"
        assert submit.follow(client, job_id) == "SUCCEEDED"
        logs = capsys.readouterr().out
        assert "coarse stage finished" in logs and "fine stage finished" in logs
        assert len(parent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")) == 2
    finally:
        cluster.shutdown()
