"""The sweep against a real MLflow tracking server on PostgreSQL, started by the deployment script
(orchestration/cluster/mlflow_server.sh) on a fresh database, with trials on a Ray worker node
reaching it over HTTP: concurrent trials lose no write, a server that goes away for a while and
comes back kills no trial and loses nothing, no secret lands in MLflow, and basic auth refuses
anonymous requests while the sweep works with credentials from the environment."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestration import records, tracking
from orchestration.config import compose_config
from orchestration.errors import ConfigError
from orchestration.stage import run_stage
from orchestration.trainable import FINAL
from sweep_helpers import SIM, small_spaces, tiny_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "orchestration" / "cluster" / "mlflow_server.sh"
PG = os.environ.get("REV2NET_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432")
# What Tune adds to every result, and what the trainable adds for Tune: not training metrics.
NOT_METRICS = {"epoch", "mlflow_run_id", "done", "trial_id", "should_checkpoint", "training_iteration", "time_total_s",
               "node_ip", "hostname", "pid", "time_this_iter_s", "timestamp", "date", "time_since_restore",
               "iterations_since_restore", "config", "checkpoint_dir_name", FINAL}  # Tune's keys and ours


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_connect(database: str = "postgres"):
    import psycopg2

    rest = PG.split("://", 1)[1]
    userhost, _, port = rest.rpartition(":")
    user, _, host = userhost.rpartition("@")
    return psycopg2.connect(host=host, port=int(port), user=user or None, dbname=database, connect_timeout=5)


@dataclass
class Server:
    """An MLflow server on a fresh PostgreSQL database, started (and restarted) by the deployment script."""

    folder: Path
    env: dict[str, str]
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> None:
        log = open(self.folder / "server.log", "a")
        self.process = subprocess.Popen(["bash", str(SCRIPT)], env={**self.env, "MLFLOW_PORT": str(self.port)},
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        raise RuntimeError(f"mlflow server not up in {timeout_s} s: {(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _server(tmp: Path, auth: bool):
    """Yields a running Server on its own new database; drops the database afterwards."""
    try:
        admin = _pg_connect()
    except Exception as e:  # noqa: BLE001 - no PostgreSQL here: nothing to test against
        why = f"no PostgreSQL at {PG} ({str(e).splitlines()[0]}); set REV2NET_TEST_POSTGRES"
        if os.environ.get("REV2NET_REQUIRE_POSTGRES") == "1":  # CI: a missing server is a failure, not a skip
            pytest.fail(why)
        pytest.skip(why)
    admin.autocommit = True
    name = f"rev2net_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": f"{PG}/{name}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp / "artifacts"), "MLFLOW_WORKERS": "2",
           "MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow"), "MLFLOW_AUTH": "1" if auth else "0"}
    for k in tracking.CREDENTIAL_ENV:
        env.pop(k, None)
    server = Server(tmp, env)
    try:
        yield server
    finally:
        server.stop()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    for s in _server(tmp_path_factory.mktemp("mlflow_server"), auth=False):
        s.start()
        yield s


@pytest.fixture(scope="module")
def cluster():
    """A Ray head (the driver's node, no CPU for trials) and one worker node: every trial logs to the
    server from another node than the driver's. Started before any test sets credentials, so the
    workers have only what the runtime environment gives them."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=2)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _overrides(tmp_path: Path, synthetic_root: str, server: Server, cluster, *extra: str) -> list[str]:
    return [o for o in tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={small_spaces(tmp_path)}", SIM,
                                      f"ray.address={cluster.address}", *extra) if not o.startswith("mlflow.tracking_uri")] \
        + [f"mlflow.tracking_uri={server.uri}"]


def _reported(storage_dir: str) -> dict[str, dict[int, dict[str, float]]]:
    """What each trial reported to Tune: trial id -> epoch -> metrics (a re-run epoch counts once)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for result_file in Path(storage_dir).glob("*/result.json"):
        for line in result_file.read_text().splitlines():
            row = json.loads(line)
            if row.get("diverged"):
                continue
            out.setdefault(row["trial_id"], {})[int(row["epoch"])] = {
                k: v for k, v in row.items() if k not in NOT_METRICS and isinstance(v, (int, float))}
    return out


def _check_every_metric_logged(result) -> int:
    """Every metric of every epoch each trial reported is in MLflow, once, with its value. Returns the count."""
    c = MlflowClient(tracking_uri=result.tracking_uri)
    reported = _reported(result.storage_dir)
    runs = list(records.child_runs(c, c.get_experiment_by_name(result.experiment).experiment_id, result.parent_run_id))
    assert len(runs) == len(reported) == result.plan.num_trials, "one run per trial"
    count = 0
    for run in runs:
        epochs = reported[run.data.tags[records.TAG_RAY_TRIAL]]
        keys = {k for metrics in epochs.values() for k in metrics}
        assert keys <= set(run.data.metrics), f"{run.info.run_name} lacks {keys - set(run.data.metrics)}"
        for key in keys:
            logged = [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, key)]
            expected = [(e, float(m[key])) for e, m in sorted(epochs.items()) if key in m]
            assert sorted(logged) == expected, f"{key} of {run.info.run_name}: logged {logged}, reported {expected}"
            count += len(logged)
    return count


def _no_secret_anywhere(result, secret: str) -> None:
    c = MlflowClient(tracking_uri=result.tracking_uri)
    exp_id = c.get_experiment_by_name(result.experiment).experiment_id
    for run in c.search_runs([exp_id], max_results=1000):
        for what in (run.data.params, run.data.tags):
            assert not [k for k, v in what.items() if secret in str(v)], f"a secret in run {run.info.run_name}"
    for artifact in ("config.yaml", "plan.json"):
        text = Path(c.download_artifacts(result.parent_run_id, artifact)).read_text()
        assert secret not in text, f"a secret in the parent run's {artifact}"


def test_concurrent_trials_lose_no_write_and_no_secret_lands_in_mlflow(server, cluster, tmp_path, synthetic_root,
                                                                      monkeypatch):
    # credentials in the environment (this server has no auth and ignores them), and the same secret
    # typed into an override by mistake: neither may reach a param, a tag or an artifact
    secret = secrets.token_hex(12)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sweeper")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    result = run_stage(compose_config(_overrides(
        tmp_path, synthetic_root, server, cluster, "search.mode=factorial", "trainer.max_epochs=3", "trial.cpus=0.5",
        f"+trial.runner_args.marker_dir={tmp_path}/{secret}"), stage="coarse"), progress=False)
    assert result.complete
    count = _check_every_metric_logged(result)
    assert count == 16 * 3 * 11, "16 trials x 3 epochs x the stand-in's 11 metrics"
    _no_secret_anywhere(result, secret)


def test_a_server_away_for_a_while_kills_no_trial_and_loses_nothing(server, cluster, tmp_path, synthetic_root):
    placed = tmp_path / "placement"
    outage: list[float] = []

    def restart_the_server_mid_sweep():
        c = MlflowClient(tracking_uri=server.uri)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                runs = c.search_runs([c.get_experiment_by_name("outage").experiment_id],
                                     filter_string="tags.`rev2net.role` = 'trial'")
            except Exception:  # noqa: BLE001 - not there yet
                continue
            if any(int(r.data.tags.get(records.TAG_LOGGED_EPOCH, 0)) >= 1 for r in runs):
                break
        outage.append(time.monotonic())
        server.stop(signal.SIGKILL)  # a crash, not a shutdown
        time.sleep(8)
        server.start()
        outage.append(time.monotonic())

    result_box = {}
    sweep = threading.Thread(target=lambda: result_box.setdefault("result", run_stage(compose_config(_overrides(
        tmp_path, synthetic_root, server, cluster, "trainer.max_epochs=4", "trial.cpus=1",
        "+trial.runner_args.epoch_s=1", f"+trial.runner_args.placement_dir={placed}",
        "mlflow.experiment=outage"), stage="coarse"), progress=False)))
    sweep.start()
    restart_the_server_mid_sweep()
    sweep.join(timeout=240)
    assert not sweep.is_alive() and "result" in result_box, "the sweep finished"
    result = result_box["result"]
    assert outage[1] - outage[0] >= 8, "the server was away for 8 s"
    assert result.complete and all(t["error"] is None for t in result.trials)
    attempts = [json.loads(p.read_text()) for p in placed.glob("*.json")]
    assert len(attempts) == 5 and all(a["resumed_from"] == 0 and "end" in a for a in attempts), \
        "each trial trained in one go: none was killed or restarted"
    assert _check_every_metric_logged(result) == 5 * 4 * 11


def test_basic_auth_refuses_anonymous_requests_and_the_sweep_uses_credentials_from_the_environment(
        cluster, tmp_path, synthetic_root, monkeypatch):
    import ray

    password = secrets.token_urlsafe(16)
    for auth_server in _server(tmp_path, auth=True):
        auth_server.env.update(MLFLOW_AUTH_ADMIN_USERNAME="admin", MLFLOW_AUTH_ADMIN_PASSWORD=password,
                               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
        auth_server.start()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{auth_server.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert refused.value.code == 401
        with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME"):
            tracking.check_reachable(auth_server.uri)

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        ray.shutdown()  # the driver joins the cluster again, now with credentials for its workers
        result = run_stage(compose_config(_overrides(tmp_path, synthetic_root, auth_server, cluster,
                                                     "trainer.max_epochs=2"), stage="coarse"), progress=False)
        assert result.complete
        assert _check_every_metric_logged(result) == 5 * 2 * 11
        _no_secret_anywhere(result, password)
