"""orchestration/grid.py, the CLI: the dry-run plan of every stage and mode, and every invalid input
failing fast, in one line, before a trial (or Ray) starts."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestration.fine import log_bracket
from orchestration.grid import main
from sweep_helpers import SIM, small_spaces, tiny_overrides

WEIGHTS = ("loss.alpha", "loss.beta", "loss.lambda_flow", "loss.lambda_im")
COARSE = [0, 0.0001, 0.001, 0.1, 1, 10]


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def coarse_store(tmp_path_factory, synthetic_root):
    """A real (constant-time) coarse sweep in MLflow, for the fine and ablation plans to read."""
    import ray

    from orchestration.config import compose_config
    from orchestration.stage import run_stage

    tmp = tmp_path_factory.mktemp("coarse_store")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    cfg = compose_config(tiny_overrides(tmp, synthetic_root, SIM, f"search.spaces_dir={small_spaces(tmp)}"),
                         stage="coarse")
    result = run_stage(cfg, progress=False)
    if started:
        ray.shutdown()
    return tmp, result


def test_dry_run_imports_neither_ray_nor_torch(tmp_path):
    """The whole plan, validated trial by trial, without the heavy machinery (run in a fresh interpreter);
    with no store yet to read earlier stages from, not even mlflow."""
    code = ("import sys; from orchestration.grid import main; "
            f"assert main(['--stage', 'ablation', '--dry-run', 'mlflow.tracking_uri=sqlite:///{tmp_path}/m.db']) == 0; "
            "print(sorted(m for m in ('ray', 'torch', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


@pytest.mark.parametrize("stage,mode,trials", [
    ("coarse", "axes", 21), ("coarse", "factorial", 1296), ("ablation", "axes", 30),
])
def test_dry_run_counts_without_earlier_results(capsys, tmp_path, stage, mode, trials):
    code, out, err = _run(capsys, "--stage", stage, "--dry-run", f"search.mode={mode}", "scheduler=fifo",
                          f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
    assert code == 0, err
    assert f"{trials} trials" in out.splitlines()[0]
    if stage == "coarse":
        for key in WEIGHTS:
            assert f"{key}  " in out and "0, 0.0001, 0.001, 0.1, 1, 10" in out
        from orchestration.config import compose_config
        epochs = compose_config([]).trainer.max_epochs
        assert "1 CPU, 0 GPU per trial" in out and f"trial-epochs: {trials * epochs} " in out
    else:
        assert "weights from the loss config (no finished fine or coarse stage" in out
        assert "none, long_term, short_term, complete" in out
    assert not (tmp_path / "ray_results").exists(), "a dry run starts nothing"


def test_dry_run_json_lists_every_trial_configuration(capsys, tmp_path):
    code, out, _ = _run(capsys, "--stage", "coarse", "--dry-run", "--json", "search.mode=factorial")
    assert code == 0
    trials = json.loads(out)
    assert len(trials) == 1296
    assert sorted({t["config"]["loss"]["alpha"] for t in trials}) == COARSE
    assert {tuple(t["params"][k] for k in WEIGHTS) for t in trials} == \
        {(a, b, f, i) for a in COARSE for b in COARSE for f in COARSE for i in COARSE}
    assert all(t["config"]["model"]["width"] == 0.1875 for t in trials)


def test_dry_run_asha_counts_trial_epochs(capsys):
    code, out, _ = _run(capsys, "--stage", "coarse", "--dry-run", "search.mode=factorial", "scheduler=asha",
                        "scheduler.grace_period=1", "trainer.max_epochs=9")
    assert code == 0
    # rungs at 1, 3, 9 with η=3: 1296·1 + 432·2 + 144·6 = 3024 trial-epochs (vs 11664 without stopping)
    assert "trial-epochs: 3024 (asha: rungs at epochs 1, 3, 9" in out and "11664 without early stopping" in out


def test_the_embedded_default_stops_grid_trials_early_and_never_a_variant(capsys):
    """data=synthetic picks ASHA with a grace period of 3 epochs for its grids (the 10-minute budget);
    scheduler=fifo on the command line still wins; a variant stage trains every trial to the end."""
    code, out, _ = _run(capsys, "--stage", "coarse", "--dry-run")
    assert code == 0 and "trial-epochs: 91 (asha: rungs at epochs 3, 7, keeping 1/3" in out  # 21·3 + 7·4
    code, out, _ = _run(capsys, "--stage", "coarse", "--dry-run", "scheduler=fifo")
    assert code == 0 and "trial-epochs: 147 (fifo: 21 trials × 7 epochs)" in out
    code, out, _ = _run(capsys, "--stage", "ablation", "--dry-run", "loss=paper", "search.seeds=1")
    assert code == 0 and "trial-epochs: 70 (fifo: 10 trials × 7 epochs; asha stops only grid-search trials early)" in out
    code, out, _ = _run(capsys, "--stage", "coarse", "--dry-run", "trainer.max_epochs=3")
    assert code == 0 and "trial-epochs: 63 (fifo: 21 trials × 3 epochs; asha's first rung, epoch 3, is not before" in out


def test_dry_run_of_fine_and_ablation_read_the_coarse_result(capsys, coarse_store):
    tmp, coarse = coarse_store
    uri = f"mlflow.tracking_uri={coarse.tracking_uri}"
    best = coarse.best["params"]
    code, out, err = _run(capsys, "--stage", "fine", "--dry-run", "--json", uri, "search.mode=factorial")
    assert code == 0, err
    trials = json.loads(out)
    grid = {key: sorted({t["params"][key] for t in trials}) for key in WEIGHTS}
    assert len(trials) == math.prod(len(v) for v in grid.values())
    for key, values in grid.items():
        assert values == log_bracket(best[key], COARSE, [0, 0.5, 1]), key
        positive = [v for v in COARSE if v > 0]
        if best[key] > 0:  # the coarse best bracketed by its neighbours (mirrored past the grid's edge)
            below, above = [v for v in positive if v < best[key]], [v for v in positive if v > best[key]]
            assert (min(v for v in values if v > 0), max(values)) == pytest.approx(
                (below[-1] if below else best[key] ** 2 / above[0], above[0] if above else best[key] ** 2 / below[-1]))
        assert 0 in values and best[key] in values, key
    code, out, _ = _run(capsys, "--stage", "fine", "--dry-run", uri)
    assert code == 0 and f"fine grid from coarse sweep {coarse.parent_run_id}" in out
    assert f"{1 + sum(len(v) - 1 for v in grid.values())} trials" in out.splitlines()[0]
    assert "fine values by rule orchestration.fine:log_bracket, factors 0, 0.5, 1: Values between the best's lower " \
           "and upper coarse neighbours, spaced on a log scale, plus 0" in out
    code, out, _ = _run(capsys, "--stage", "ablation", "--dry-run", "--json", uri, "search.seeds=2")
    ablation = json.loads(out)
    assert len(ablation) == 10 * 2
    full = next(t for t in ablation if t["params"]["variant"] == "rev2net")
    assert {k: full["params"][k] for k in WEIGHTS} == best, "ablation weights default to the latest best"


def test_fine_without_a_coarse_stage_says_what_to_run(capsys, tmp_path):
    code, _, err = _run(capsys, "--stage", "fine", "--dry-run", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}")
    assert code == 2
    assert "run `python orchestration/grid.py --stage coarse`" in err and err.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_space(tmp_path: Path) -> str:
    spaces = small_spaces(tmp_path)
    (spaces / "coarse.yaml").write_text("values: {loss.alpha: [0, -0.5]}\nbase: {loss.alpha: 0}\n")
    return str(spaces)


def _broken_dataset(root: str) -> str:
    victim = sorted(Path(root).glob("*/*.avi"))[0]
    victim.unlink()
    return root


@pytest.fixture
def not_ray():
    """A TCP server that answers, but is not Ray (as Redis on 6379 or a web server would): host:port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"-ERR unknown command\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.mark.parametrize("case", ["stage", "weight", "space_weight", "key", "type", "dataset", "layout", "mlflow",
                                  "ray", "not_ray", "resume"])
def test_invalid_input_fails_fast_in_one_line(capsys, tmp_path, synthetic_copy, synthetic_root, not_ray, case):
    import ray

    base = tiny_overrides(tmp_path, synthetic_copy)
    args = {
        "stage": ["--stage", "corse"],
        "weight": ["--stage", "coarse", *base, "loss.alpha=-1"],
        "space_weight": ["--stage", "coarse", *base, f"search.spaces_dir={_bad_space(tmp_path)}"],
        "key": ["--stage", "coarse", *base, "trainer.max_epoch=3"],
        "type": ["--stage", "coarse", *base, "trainer.max_epochs=many"],
        "dataset": ["--stage", "coarse", *tiny_overrides(tmp_path, _broken_dataset(synthetic_copy))],
        "layout": ["--stage", "coarse", *base, "data=ucf101", f"data.root={tmp_path}"],
        "mlflow": ["--stage", "coarse", *base, f"mlflow.tracking_uri=http://127.0.0.1:{_free_port()}"],
        "ray": ["--stage", "coarse", *base, f"ray.address=127.0.0.1:{_free_port()}"],
        "not_ray": ["--stage", "coarse", *base, f"ray.address={not_ray}"],
        "resume": ["--stage", "coarse", "--resume", *tiny_overrides(tmp_path, synthetic_root)],  # the data is fine
    }[case]
    expected = {
        "stage": "stage 'corse' is not one of coarse, fine, ablation",
        "weight": "loss.alpha=-1.0 must be a finite number >= 0",
        "space_weight": "loss.alpha=-0.5 must be a finite, non-negative number",
        "key": "unknown config key 'trainer.max_epoch'",
        "type": "trainer.max_epochs: Value 'many'",
        "dataset": "dataset synthetic at",
        "layout": "dataset ucf101 at",
        "mlflow": "is unreachable",
        "ray": "Ray cluster at ray.address=",
        "not_ray": f"ray.address='{not_ray}' answers but is not a Ray cluster's GCS",
        "resume": "--resume: there is no interrupted coarse stage",
    }[case]
    was_running = ray.is_initialized()
    code, out, err = _run(capsys, *args)
    assert code == 2, (out, err)
    assert expected in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, "one line"
    assert ray.is_initialized() == was_running, "Ray was not started"
    assert not (tmp_path / "ray").exists(), "no trial started"
    assert not (tmp_path / "mlflow.db").exists(), "nothing written to the store"
