"""`python -m analysis.report`: every table and figure the experiment supports is written, the
tables are printed, and a wrong store or experiment is one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from analysis import report
from orchestration.records import REPO

TABLES = ("status", "coarse_marginals", "coarse_top", "coarse_importance", "fine_marginals", "fine_top",
          "fine_importance", "best", "ablation", "shuffle", "cost")  # cost: every trial logs its own
FIGURES = ("coarse_marginals", "coarse_alpha_beta", "coarse_flow_im", "coarse_curves", "coarse_top", "coarse_importance",
           "fine_marginals", "fine_alpha_beta", "fine_flow_im", "fine_curves", "fine_top", "fine_importance",
           "fine_loss_terms", "ablation", "shuffle")


def test_report_writes_every_file(sweep_store, tmp_path, capsys):
    out = tmp_path / "report"
    code = report.main(["--tracking-uri", sweep_store.tracking_uri, "--experiment", sweep_store.experiment,
                        "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    importance = {t for t in TABLES if t.endswith("_importance")}
    for name in importance:   # fANOVA's forest may refuse a design (stats.fanova's own check): then it says so
        if not (out / f"{name}.md").exists():
            assert f"skipped: {name}: fANOVA:" in printed
    made = {t for t in TABLES if t not in importance or (out / f"{t}.md").exists()}
    expected = {f"{t}.{ext}" for t in made for ext in ("md", "csv", "tex")}
    expected |= {f"{f}.png" for f in FIGURES if f not in importance or f in made}
    expected |= {"runs.csv", "report.md"}
    assert {p.name for p in out.iterdir()} == expected
    assert all((out / name).stat().st_size > 0 for name in expected)
    for table in made:   # printed to the terminal as well
        title = (out / f"{table}.md").read_text().splitlines()[0]
        assert title in printed
    assert "skipped: cross_dataset: no cross-dataset trials" in printed
    page = (out / "report.md").read_text()
    assert all(f"]({f}.png)" in page for f in FIGURES if f not in importance or f in made)
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
    assert [n for n in names if n != "coarse_importance"] == ["status", "coarse_marginals", "coarse_top", "best", "cost"]
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


def test_the_report_opens_with_the_verdict(planted_store, tmp_path):
    from mlflow import MlflowClient

    from rev2net import registry

    out = tmp_path / "planted"
    assert report.main(["--tracking-uri", planted_store.tracking_uri, "--experiment", planted_store.experiment,
                        "--out", str(out), "--quiet", "--no-paper"]) == 0
    lines = (out / "report.md").read_text().splitlines()
    verdict = "\n".join(lines[lines.index("## Verdict"):lines.index("## Verdict") + 8])
    assert lines.index("## Verdict") == 2, "the answer comes first"
    assert "the best is **α=0.01 β=0.1 λ_flow=0.1 λ_im=0.1**" in verdict and "3 seeds" in verdict
    assert "Statistically indistinguishable from it" in verdict and "4 of the 5 others" in verdict
    assert "α=10" not in verdict.split("Statistically indistinguishable")[1].split("\n")[0], "the planted one differs"
    ablation = next(line for line in lines if line.startswith("- **Ablation**"))
    assert f"difference at this budget: {registry.label(registry.NO_DDP)} -15" in ablation
    assert registry.label(registry.NO_FLOW_DECODER) in ablation.split("Not distinguishable")[1]
    assert "**Cost**" in verdict
    # after a stage: its report into its parent run
    parent = planted_store.parents["ablation"]
    assert report.main(["--tracking-uri", planted_store.tracking_uri, "--experiment", planted_store.experiment,
                        "--out", str(tmp_path / "parent"), "--quiet", "--log-to-parent", parent]) == 0
    c = MlflowClient(tracking_uri=planted_store.tracking_uri)
    held = {f.path for f in c.list_artifacts(parent, report.REPORT_ARTIFACTS)}
    assert {"report/report.md", "report/ablation.md", "report/ablation.png"} <= held
    page = (tmp_path / "parent" / "report.md").read_text()
    assert "**Ablation**" in page and "Coarse stage" not in page, "only that invocation's trials"
