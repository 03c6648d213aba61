"""orchestration/claim.py: one driver per sweep. Drivers released at the same instant (a barrier)
claim a sweep: exactly one wins, round after round, on a folder and on the tracking store (SQLite,
and the PostgreSQL-backed tracking server); a dead driver's claim is taken over; and real drivers
of a tiny stage started together leave one parent run, one child run per trial and each step once."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration import claim, tracking
from orchestration.errors import SweepBusy
from sweep_helpers import SIM, child_runs, parent_runs, small_spaces, steps, tiny_overrides

REPO = Path(__file__).resolve().parent.parent
DRIVERS = 5


def _slots(kind: str, where: str):
    return claim.FileSlots(where) if kind == "file" else claim.MlflowSlots(where, "rev2net-test/coarse-axes-x")


def _racer(kind: str, where: str, rounds: int, barrier, results) -> None:
    """One driver process: every round, wait for all, claim, wait until all have tried, release."""
    slots = _slots(kind, where)
    for r in range(rounds):
        barrier.wait()
        try:
            held = claim.acquire(slots, stage="coarse", sweep_id="coarse-axes-x", every_s=3600)
            outcome = ("won", os.getpid(), held.number)
        except SweepBusy as e:
            held, outcome = None, ("busy", os.getpid(), str(e))
        barrier.wait()           # every driver has tried while the winner still holds the claim
        if held is not None:
            held.release()
        results.put((r, *outcome))
        barrier.wait()           # released before the next round


def _race(kind: str, where: str, rounds: int) -> None:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may run Ray threads
    barrier, results = ctx.Barrier(DRIVERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(kind, where, rounds, barrier, results)) for _ in range(DRIVERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in range(rounds * DRIVERS)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in range(rounds):
        this = [o for o in outcomes if o[0] == r]
        won = [o for o in this if o[1] == "won"]
        assert len(won) == 1, f"round {r}: exactly one driver claims the sweep, not {len(won)}"
        assert won[0][3] == r + 1, "each round's claim is the next number"
        for _, _, pid, message in (o for o in this if o[1] == "busy"):
            assert f"{socket.gethostname()}:{won[0][2]} (since " in message, message
            assert message.startswith("the coarse stage (sweep coarse-axes-x) is being run by "), message


@pytest.mark.slow
def test_one_of_n_drivers_released_together_claims_a_folder(tmp_path):
    _race("file", str(tmp_path / "claims"), rounds=20)


@pytest.mark.slow
def test_one_of_n_drivers_released_together_claims_a_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.open_store(uri)
    _race("mlflow", uri, rounds=8)


@pytest.mark.slow
def test_one_of_n_drivers_released_together_claims_the_tracking_server(tmp_path):
    from test_tracking_server import _server

    for server in _server(tmp_path, auth=False):
        server.start()
        _race("mlflow", server.uri, rounds=8)


@pytest.mark.parametrize("kind", ["file", "mlflow"])
def test_a_dead_drivers_claim_is_taken_over_a_live_ones_never(tmp_path, kind):
    where = str(tmp_path / "claims") if kind == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    if kind == "mlflow":
        tracking.open_store(where)
    slots = _slots(kind, where)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    # a driver on this machine whose process is gone: its claim is free at once
    assert slots.create(1, claim.Holder(socket.gethostname(), int(dead.stdout), now, now))
    held = claim.acquire(slots, stage="coarse", sweep_id="s", every_s=3600)
    assert held.number == 2
    held.release()
    # a driver elsewhere with a fresh heartbeat holds it; with a stale one, it is free
    assert slots.create(3, claim.Holder("elsewhere", 1, now - 600, now))
    with pytest.raises(SweepBusy, match=r"is being run by elsewhere:1 \(since .* UTC, heartbeat 0 s ago\)"):
        claim.acquire(slots, stage="coarse", sweep_id="s", every_s=3600)
    assert slots.create(4, claim.Holder("elsewhere", 2, now - 600, now - tracking.HEARTBEAT_STALE_S - 1))
    with claim.acquire(slots, stage="coarse", sweep_id="s", every_s=0.05) as held:
        assert held.number == 5
        first = slots.read(5).beat
        time.sleep(0.3)
        assert slots.read(5).beat > first, "the holder's heartbeat is refreshed"
    assert slots.read(5).beat == 0, "released"


def test_claims_live_next_to_the_tune_state_or_in_the_tracking_store(tmp_path):
    folder = claim.slots_for(str(tmp_path / "ray"), "rev2net-synthetic", "coarse-axes-x", "sqlite:///x.db")
    assert isinstance(folder, claim.FileSlots)
    assert folder.where() == str(tmp_path / "ray" / "rev2net-synthetic" / ".claims" / "coarse-axes-x")
    store = claim.slots_for("s3://bucket/ray", "rev2net-synthetic", "coarse-axes-x", "http://mlflow.internal:5000")
    assert isinstance(store, claim.MlflowSlots)
    assert store.where() == "http://mlflow.internal:5000 (experiments rev2net.claim:rev2net-synthetic/coarse-axes-x/<n>)"


DRIVER = """
import os, sys, time
ready, go = os.environ["READY"], os.environ["GO"]
from orchestration.grid import main
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
sys.exit(main(os.environ["ARGS"].split("\\x1f")))
"""


@pytest.mark.slow
def test_drivers_of_a_stage_started_together_run_it_once(tmp_path, synthetic_root):
    """Real drivers (grid.py's main, real Ray and a new SQLite store), released together: one runs the
    stage, the others exit 2 naming it; the store holds one parent run and one child run per trial,
    each step once."""
    args = ["--stage", "coarse", *tiny_overrides(tmp_path, synthetic_root, f"search.spaces_dir={small_spaces(tmp_path)}",
                                                 SIM, "ray.num_cpus=2", "trainer.max_epochs=2")]
    go = tmp_path / "go"
    procs = []
    for i in range(4):
        env = {**os.environ, "READY": str(tmp_path / f"ready{i}"), "GO": str(go), "ARGS": "\x1f".join(args),
               "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER], cwd=tmp_path, env=env,
                                      stdout=open(tmp_path / f"out{i}", "w"), stderr=open(tmp_path / f"err{i}", "w")))
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    done = [(p.wait(timeout=600), (tmp_path / f"out{i}").read_text(), (tmp_path / f"err{i}").read_text())
            for i, p in enumerate(procs)]
    codes = sorted(code for code, _, _ in done)
    assert codes == [0, 2, 2, 2], [(c, err[-2000:]) for c, _, err in done]
    winner = next(p.pid for p, (code, _, _) in zip(procs, done) if code == 0)
    for code, out, err in done:
        if code == 2:
            line, = err.strip().splitlines()[-1:]
            assert line.startswith("error: the coarse stage (sweep coarse-axes-") and \
                f"is being run by {socket.gethostname()}:{winner} (since " in line, err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents = parent_runs(uri)
    assert len(parents) == 1, "one parent run"
    runs = child_runs(uri, parent=parents[0].info.run_id)
    assert len(runs) == 5 == len(child_runs(uri)), "one child run per trial"
    assert all(steps(uri, r.info.run_id) == [1, 2] for r in runs), "each step once"
    claims = sorted((tmp_path / "ray" / "rev2net-synthetic" / ".claims").glob("*/*.claim"))
    assert len(claims) == 1 and json.loads(claims[0].read_text())["pid"] == winner
