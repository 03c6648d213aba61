"""A screenshot of MLflow's compare view of a stage's top configurations, taken in a headless browser.

    python -m analysis.mlflow_screenshot --tracking-uri sqlite:///mlflow.db --experiment rev2net-synthetic \
        --out docs/mlflow_compare.png [--stage coarse] [--top 5]

Starts `mlflow ui` on the store (a free local port), and with Debian's chromium (`apt-get install
chromium`; --chromium names another binary):
  1. opens the experiment's page and checks that it shows the runs table (its "Run Name" column),
     not MLflow 3's GenAI "Overview / Traces" page, which an experiment without the
     `mlflow.experimentKind` tag opens on; exit status 1 if it does not;
  2. opens the compare view of the stage's top `--top` runs (`best_config`'s order, the newest
     invocation of the stage) and saves it as a PNG (`--out`), plus the experiment page beside it
     (`<out stem>_runs.png`).
Not a test (CI has no browser): run it by hand, e.g. for the README's screenshot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from orchestration.records import (WEIGHTS, client_for, experiment_ids, load_runs, rank_trials, resolve_tracking_uri,
                                   stage_runs)

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(tracking_uri: str, port: int, timeout_s: float = 300.0) -> subprocess.Popen:
    """`mlflow ui` on the store, answering /health (or an error naming what it printed)."""
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", tracking_uri,
               "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited: {proc.stdout.read()[-2000:] if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"mlflow ui did not answer on port {port} within {timeout_s:.0f} s")


def chromium(binary: str, url: str, *, screenshot: Optional[Path] = None, size: str = "1600,1000",
             budget_ms: int = 20000, timeout_s: float = 120.0) -> str:
    """Load `url` headless for `budget_ms` of virtual time; save a screenshot or return the DOM."""
    args = [binary, *CHROMIUM_FLAGS, f"--window-size={size}", f"--virtual-time-budget={budget_ms}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=timeout_s)
    if screenshot is not None and not screenshot.exists():
        raise RuntimeError(f"chromium wrote no screenshot: {proc.stderr[-1000:]}")
    return proc.stdout


def top_runs(tracking_uri: str, experiment: str, stage: str, top: int) -> list[str]:
    """The run ids of the newest `stage` invocation's top configurations (best_config's order)."""
    parents = stage_runs(client_for(tracking_uri), experiment, stage=stage)
    runs = load_runs(tracking_uri, experiment, stage=stage,
                     parent_run_id=None if parents.empty else parents.iloc[0]["run_id"], best_epoch=False)
    ranked, _ = rank_trials(runs, keys=[w for w in WEIGHTS if w in runs])
    return ranked["run_id"].head(top).tolist()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.mlflow_screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--stage", default="coarse")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--out", default="docs/mlflow_compare.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--size", default="1600,1000", help="browser window, width,height in pixels")
    args = parser.parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    exp_id = experiment_ids(client_for(uri), args.experiment)[0]
    ids = top_runs(uri, args.experiment, args.stage, args.top)
    names = [client_for(uri).get_run(i).info.run_name for i in ids]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    ui = start_ui(uri, port)
    try:
        base = f"http://127.0.0.1:{port}/#"
        page = f"{base}/experiments/{exp_id}/runs"
        dom = chromium(args.chromium, f"{base}/experiments/{exp_id}", size=args.size)
        runs_table = "Run Name" in dom
        chromium(args.chromium, page, screenshot=out.with_name(out.stem + "_runs.png"), size=args.size)
        query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp_id])})
        chromium(args.chromium, f"{base}/compare-runs?{query}", screenshot=out, size=args.size)
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    print(f"experiment {args.experiment} ({exp_id}) opens on "
          + ("its runs table" if runs_table else "something else than the runs table (the GenAI overview? tag it: "
             "orchestration.tracking.experiment_id sets mlflow.experimentKind)"))
    print(f"wrote {out} (compare view of the top {len(ids)}: {'; '.join(names)}) and "
          f"{out.with_name(out.stem + '_runs.png')}")
    return 0 if runs_table else 1


if __name__ == "__main__":
    sys.exit(main())
