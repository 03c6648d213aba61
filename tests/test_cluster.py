"""The sweep on a multi-node Ray cluster, simulated on this machine (`ray.cluster_utils.Cluster`:
a head and GPU worker nodes, each a real raylet; the GPUs are declared, not real, which is all
placement needs): trials are packed as configured and never exceed a node's resources, and a node
lost mid-sweep costs its trials one retry each, elsewhere, from their last checkpoints, with one
MLflow run per trial and a continuous history."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from orchestration import records
from orchestration.config import compose_config
from orchestration.stage import run_stage
from sweep_helpers import SIM, child_runs, small_spaces, steps, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A head without GPUs (the driver's node: no trial fits there) and two GPU nodes: A with
    2 CPUs and 1 GPU, B with 1 CPU and 1 GPU."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's local Ray: this module's driver joins the cluster instead
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    nodes = {"A": c.add_node(num_cpus=2, num_gpus=1), "B": c.add_node(num_cpus=1, num_gpus=1)}
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="ERROR")
    try:
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()


def _placements(folder: Path) -> list[dict]:
    out = []
    for p in folder.glob("*.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (ValueError, OSError):  # being replaced
            pass
    return out


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _overrides(tmp_path: Path, synthetic_root: str, address: str, *extra: str) -> list[str]:
    return tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={small_spaces(tmp_path)}", SIM,
                          f"ray.address={address}", *extra)


def test_fractional_gpu_trials_are_packed_and_never_exceed_a_node(cluster, tmp_path, synthetic_root):
    c, nodes = cluster
    placed = tmp_path / "placement"
    result = run_stage(compose_config(_overrides(
        tmp_path, synthetic_root, c.address, "search.mode=factorial", "trial.gpus=0.25", "trial.cpus=0.5",
        "trainer.max_epochs=2", "+trial.runner_args.epoch_s=1", f"+trial.runner_args.placement_dir={placed}"),
        stage="coarse"), progress=False)
    runs = child_runs(result.tracking_uri, parent=result.parent_run_id)
    assert len(runs) == 16 and all(r.data.tags[records.TAG_STATUS] == "completed" for r in runs)

    placements = _placements(placed)
    assert len(placements) == 16 and all(len(r["gpu_ids"]) == 1 for r in placements), "a quarter of one GPU each"
    on = {name: [r for r in placements if r["node_id"] == node.node_id] for name, node in nodes.items()}
    assert len(on["A"]) + len(on["B"]) == 16, "no trial on the head, which has no GPU"
    most = {name: _most_at_once([(r["start"], r["end"]) for r in rs]) for name, rs in on.items()}
    assert most["A"] == 4, f"4 trials share node A's GPU at 0.25 each ({most})"
    assert most["B"] <= 2, f"node B's single CPU holds 2 trials at 0.5 CPU, whatever its GPU could take ({most})"


def test_a_node_lost_mid_sweep_costs_its_trials_a_retry_elsewhere_from_their_checkpoints(
        cluster, tmp_path, synthetic_root):
    c, nodes = cluster
    placed = tmp_path / "placement"
    removed: list[float] = []

    def remove_a_busy_node():
        """Once a trial running on node A has had an epoch's report (and checkpoint) taken by the driver,
        and its next epoch is under way, node A goes away (its raylet and workers die)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not removed:
            time.sleep(0.1)
            now = time.time()
            if any(r["node_id"] == nodes["A"].node_id and "end" not in r and r["reported"] > r["resumed_from"]
                   and now - r["reported_at"] > 0.3 for r in _placements(placed)):
                removed.append(now)
                c.remove_node(nodes["A"], allow_graceful=False)

    killer = threading.Thread(target=remove_a_busy_node, daemon=True)
    killer.start()
    result = run_stage(compose_config(_overrides(
        tmp_path, synthetic_root, c.address, "trial.gpus=0.5", "trial.cpus=0.5", "trainer.max_epochs=4",
        "trial.max_failures=2", "+trial.runner_args.epoch_s=1", f"+trial.runner_args.placement_dir={placed}"),
        stage="coarse"), progress=False)
    killer.join(timeout=5)
    assert removed, "node A was removed mid-sweep"

    runs = child_runs(result.tracking_uri, parent=result.parent_run_id)
    assert len(runs) == 5, "the retried trials continued their own runs"
    for r in runs:
        assert r.data.tags[records.TAG_STATUS] == "completed", r.data.tags.get(records.TAG_FAILURE)
        assert steps(result.tracking_uri, r.info.run_id) == [1, 2, 3, 4], f"continuous history of {r.info.run_name}"
    placements = _placements(placed)
    lost = {r["trial"]: r for r in placements if r["node_id"] == nodes["A"].node_id and "end" not in r}
    assert lost, "trials were running on node A when it went"
    assert any(r["reported"] >= 1 for r in lost.values()), "a trial on node A had a checkpoint when it went"
    for trial, attempt in lost.items():
        retries = [r for r in placements if r["trial"] == trial and r["node_id"] != nodes["A"].node_id
                   and r["start"] > attempt["start"]]
        assert retries, f"trial {trial} was retried on another node"
        retry = min(retries, key=lambda r: r["start"])
        # Its report of epoch k came back, so the driver held checkpoint k; the checkpoint of the epoch
        # under way when the node went may or may not have reached the driver
        assert attempt["reported"] <= retry["resumed_from"] <= attempt["reported"] + 1, \
            f"trial {trial} continued from its last checkpoint ({attempt['reported']}), not {retry['resumed_from']}"
    assert not [r for r in placements if r["node_id"] == nodes["A"].node_id and r["start"] > removed[0] + 1]
