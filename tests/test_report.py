"""`python -m analysis.report`: every table and figure the experiment supports is written, the
tables are printed, and a wrong store or experiment is one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from analysis import report
from orchestration.records import REPO

TABLES = ("status", "coarse_marginals", "coarse_top", "fine_marginals", "fine_top", "best", "ablation", "shuffle")
FIGURES = ("coarse_marginals", "coarse_alpha_beta", "coarse_flow_im", "coarse_curves", "fine_marginals",
           "fine_alpha_beta", "fine_flow_im", "fine_curves", "fine_loss_terms", "shuffle")


def test_report_writes_every_file(sweep_store, tmp_path, capsys):
    out = tmp_path / "report"
    code = report.main(["--tracking-uri", sweep_store.tracking_uri, "--experiment", sweep_store.experiment,
                        "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    expected = {f"{t}.{ext}" for t in TABLES for ext in ("md", "csv", "tex")} | {f"{f}.png" for f in FIGURES}
    expected |= {"runs.csv", "report.md"}
    assert {p.name for p in out.iterdir()} == expected
    assert all((out / name).stat().st_size > 0 for name in expected)
    for table in TABLES:   # printed to the terminal as well
        title = (out / f"{table}.md").read_text().splitlines()[0]
        assert title in printed
    assert "skipped: cross_dataset: no cross-dataset trials" in printed
    page = (out / "report.md").read_text()
    assert all(f"]({f}.png)" in page for f in FIGURES)
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 21 + 1 + 21 + 20 and runs["run_id"].is_unique
    assert "paper: UCF101 (%)" in (out / "ablation.md").read_text()


def test_report_of_cross_dataset_runs(sweep_store, tmp_path, capsys):
    out = tmp_path / "cross"
    code = report.main(["--tracking-uri", sweep_store.tracking_uri, "--experiment", sweep_store.cross_experiment,
                        "--out", str(out), "--no-paper", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "Cross-dataset" not in printed, "--quiet prints no tables"
    text = (out / "cross_dataset.md").read_text()
    assert "HMDB51 → UCF101 (%)" in text and "paper:" not in text
    assert (out / "ablation.csv").exists()


def test_stage_selection_and_loss_terms_of_a_chosen_run(sweep_store, tmp_path):
    built = report.build(sweep_store.tracking_uri, sweep_store.experiment, stages=["coarse"],
                         run_id=sweep_store.running_run_id)
    names = [t.name for t in built.tables]
    assert names == ["status", "coarse_marginals", "coarse_top", "best"]
    assert set(built.runs["stage"]) == {"coarse"} and built.tables[0].data["stage"].tolist() == ["coarse"]
    assert "coarse_loss_terms" in built.figures and "fine_marginals" not in built.figures


def test_select_sweeps_takes_the_newest_invocation():
    runs = pd.DataFrame({"run_id": list("abcd"), "stage": ["coarse"] * 3 + ["fine"],
                         "parent_run_id": ["old", "new", "new", "f"]})
    parents = pd.DataFrame({"run_id": ["new", "old", "f"], "run_name": ["n", "o", "f"], "stage": ["coarse", "coarse", "fine"],
                            "status": ["FINISHED"] * 3})
    chosen, sources = report.select_sweeps(runs, parents)
    assert chosen["run_id"].tolist() == ["b", "c", "d"] and "1 older invocation(s) left out" in sources[0]
    pooled, _ = report.select_sweeps(runs, parents, all_sweeps=True)
    assert pooled["run_id"].tolist() == list("abcd")


@pytest.mark.parametrize("args, message", [
    (["--experiment", "rev2net-ucf101"], "does not exist"),
    (["--experiment", "x", "--tracking-uri", "sqlite:////nonexistent/mlflow.db"], "no MLflow store"),
])
def test_errors_are_one_line_and_status_2(sweep_store, tmp_path, args, message):
    argv = ["--tracking-uri", sweep_store.tracking_uri, "--out", str(tmp_path / "x"), *args]
    proc = subprocess.run([sys.executable, "-m", "analysis.report", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "x").exists()
