"""Submit a stage, or the stage pipeline, to a Ray cluster as a Ray Job.

    python orchestration/submit.py --address http://HEAD:8265 --stage coarse [--then fine,ablation]
                                   [--follow] [--if-idle] [--pip-requirements FILE] [overrides]

The job runs `python orchestration/grid.py --stage ... ray.address=auto <overrides>` on the head
node: this repository is its working directory (uploaded, without data, virtual environments,
Tune state and MLflow stores: `EXCLUDES`), the cluster's Python environment runs it (build the
image from requirements.txt; `--pip-requirements` adds packages per job instead), and the MLflow
credentials set here (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN) go to every process of the
job through its runtime environment. It prints the job id; `--follow` then streams the job's logs
and exits with 0 only if the job succeeded.

`--then fine,ablation` makes one job of the pipeline: each stage starts when the one before it has
finished, finished stages are skipped, and the same submission on a schedule continues what the
last one left (orchestration/pipeline.py). `--if-idle` submits nothing while a job of the same
command is still pending or running on the cluster (it prints that job's id instead), so
overlapping schedules never run two drivers on one sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

if __package__ in (None, ""):  # run as a script: import the package, not this folder's files
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from orchestration import tracking  # noqa: E402
from orchestration.spaces import STAGES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Never uploaded with the working directory (gitignore syntax, relative to the repository root).
# No trailing slashes: Ray matches a folder's own path without one, and a matched folder is not
# walked at all (a dataset's million files). Rooted where a name is also a code folder: /data is
# the datasets, rev2net/data is code.
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".ipynb_checkpoints",
            "/data", "/ray_results", "/mlruns", "/mlartifacts", "*.db", "/outputs", "/reports", "/multirun"]
ACTIVE = ("PENDING", "RUNNING")
COMMAND_KEY = "rev2net.command"  # job metadata: a hash of the command, for --if-idle
NO_AGENT = "No available agent to submit job"  # a new head's answer until its job agent is up ...
AGENT_WAIT_S = 120.0                            # ... retried this long


def entrypoint(stage: str, overrides: list[str], *, then: list[str] = (), python: str = "python") -> str:
    """The job's shell command. The driver joins the job's cluster (ray.address=auto) unless an
    override names another address; it must never start a Ray of its own inside the job."""
    args = [python, "orchestration/grid.py", "--stage", stage]
    if then:
        args += ["--then", ",".join(then)]
    if not any(o.split("=", 1)[0].lstrip("+") == "ray.address" for o in overrides):
        args.append("ray.address=auto")
    return shlex.join(args + list(overrides))


def pip_packages(requirements: Path) -> list[str]:
    """The requirement lines of a requirements file, less comments, options and editable installs
    (this repository travels as the working directory instead)."""
    out = []
    for line in requirements.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            out.append(line)
    return out


def runtime_env(working_dir: Path = REPO, *, pip: Optional[list[str]] = None) -> dict[str, Any]:
    """The job's runtime environment: this repository as working directory, optional pip packages,
    and the MLflow credentials set in this process's environment (only those that are set)."""
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(EXCLUDES)}
    if pip:
        env["pip"] = {"packages": list(pip), "pip_check": False}
    env_vars = tracking.worker_env_vars()
    if env_vars:
        env["env_vars"] = env_vars
    return env


def command_key(entry: str) -> str:
    return hashlib.sha1(entry.encode()).hexdigest()[:16]


def active_job(client, entry: str) -> Optional[str]:
    """The submission id of a pending or running job of this command, if there is one."""
    key = command_key(entry)
    for job in client.list_jobs():
        if (job.metadata or {}).get(COMMAND_KEY) == key and str(job.status) in ACTIVE:
            return job.submission_id
    return None


def submit(client, stage: str, overrides: list[str], *, then: list[str] = (), python: str = "python",
           pip: Optional[list[str]] = None, working_dir: Path = REPO, if_idle: bool = False,
           entrypoint_num_cpus: Optional[float] = None) -> tuple[str, bool]:
    """Submit the job; returns (submission id, whether it is new). With `if_idle`, an active job of
    the same command is returned instead of a second one."""
    entry = entrypoint(stage, overrides, then=then, python=python)
    if if_idle:
        running = active_job(client, entry)
        if running:
            return running, False
    name = "-".join([stage, *then])
    submission_id = f"rev2net-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    # A head that has just started answers 500 "No available agent to submit job, please try again
    # later" until its job agent is up (seconds; longer on a loaded head): the job was not created.
    retrying = Retrying(stop=stop_after_delay(AGENT_WAIT_S), wait=wait_fixed(2.0), reraise=True,
                        retry=retry_if_exception(lambda e: isinstance(e, RuntimeError) and NO_AGENT in str(e)))
    job_id = retrying(client.submit_job, entrypoint=entry, runtime_env=runtime_env(working_dir, pip=pip),
                      submission_id=submission_id, metadata={COMMAND_KEY: command_key(entry), "rev2net.stages": name},
                      entrypoint_num_cpus=entrypoint_num_cpus)
    return job_id, True


async def _tail(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def follow(client, job_id: str, poll_s: float = 2.0) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    asyncio.run(_tail(client, job_id))
    status = str(client.get_job_status(job_id))
    while status in ACTIVE:  # the log stream can end a moment before the status does
        time.sleep(poll_s)
        status = str(client.get_job_status(job_id))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestration/submit.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                        help="the cluster's Jobs API (dashboard) address (default: $RAY_API_SERVER_ADDRESS or "
                             "http://127.0.0.1:8265)")
    parser.add_argument("--stage", required=True, help="coarse | fine | ablation")
    parser.add_argument("--then", default="", metavar="STAGES", help="stages to run after it in the same job, e.g. fine,ablation")
    parser.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    parser.add_argument("--if-idle", action="store_true", help="submit nothing while a job of this command is active")
    parser.add_argument("--pip-requirements", type=Path, help="install these requirements for the job (slow: prefer "
                                                              "a cluster image built from requirements.txt)")
    parser.add_argument("--python", default="python", help="the cluster's Python command (default: python)")
    parser.add_argument("--entrypoint-cpus", type=float, default=None, help="CPUs reserved for the driver")
    parser.add_argument("overrides", nargs="*", help="grid.py overrides (key=value, group=option, <stage>:key=value)")
    args = parser.parse_args(argv)
    then = [s for s in args.then.split(",") if s]
    bad = [s for s in [args.stage, *then] if s not in STAGES]
    if bad:
        print(f"error: stage {bad[0]!r} is not one of {', '.join(STAGES)}", file=sys.stderr)
        return 2
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(args.address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        print(f"error: no Ray Jobs API at {args.address} ({str(e).splitlines()[0]}); start the cluster with its "
              "dashboard, or set --address", file=sys.stderr)
        return 2
    try:
        pip = pip_packages(args.pip_requirements) if args.pip_requirements else None
    except OSError as e:
        print(f"error: --pip-requirements: {e}", file=sys.stderr)
        return 2
    job_id, new = submit(client, args.stage, args.overrides, then=then, python=args.python, pip=pip,
                         if_idle=args.if_idle, entrypoint_num_cpus=args.entrypoint_cpus)
    print(job_id if new else f"{job_id} (already {client.get_job_status(job_id)}; nothing submitted)", flush=True)
    if not args.follow:
        print(f"logs: ray job logs --address {args.address} --follow {job_id}", file=sys.stderr)
        return 0
    status = follow(client, job_id)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
