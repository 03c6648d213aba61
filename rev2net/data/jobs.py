"""One job per video over every core, as the flow extraction and the dataset resize run them:
a process per core, progress with an ETA, and a summary that lists failures by video.

A job is a tuple whose first element names it (the source video's path) and that is passed as
arguments to a module-level function (pickled to spawn-started workers). The function returns
how many units of work it did (frame pairs, frames); an exception fails that job only: it is
reported in the summary and the run goes on. Resuming is the caller's part: it leaves out the
jobs whose output already exists and counts them as `skipped`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
from tqdm import tqdm


@dataclass
class JobSummary:
    what: str  # "flow", "resize": the first word of the report
    verb: str  # what happened to a video: "extracted", "resized"
    unit: str  # what `units` counts: "frame pairs", "frames"
    done: int = 0  # videos this run completed
    skipped: int = 0  # videos already complete (resumed)
    units: int = 0  # work done by this run
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # video path -> error

    def report(self) -> str:
        rate = self.units / max(self.seconds, 1e-9)
        lines = [f"{self.what}: {self.done} videos {self.verb} ({self.units} {self.unit}, {self.seconds:.1f} s, "
                 f"{rate:.1f} {self.unit}/s), {self.skipped} already done, {len(self.failures)} failed"]
        lines += [f"  FAILED {path}: {error}" for path, error in sorted(self.failures.items())]
        return "\n".join(lines)


def worker_init() -> None:
    cv2.setNumThreads(1)  # one worker per core: no oversubscription


def run_jobs(function: Callable[..., int], jobs: list[tuple], summary: JobSummary, *, workers: int | None = None,
             progress: bool = True) -> JobSummary:
    """Run `function(*job)` for every job with `workers` processes (default: every core; 1 runs in
    this process); fills and returns `summary`."""
    start = time.perf_counter()
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    bar = tqdm(total=len(jobs), desc=summary.what, unit="video", disable=not progress, smoothing=0.1)
    calls = [(function, job) for job in jobs]
    if workers == 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            _collect(map(_call, calls), summary, bar)
        finally:
            cv2.setNumThreads(threads)
    else:
        context = multiprocessing.get_context("spawn")  # safe beside threads (decord, torch, tqdm)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=worker_init) as pool:
            chunks = max(1, min(8, len(calls) // (8 * workers)))
            _collect(pool.map(_call, calls, chunksize=chunks), summary, bar)
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _call(call: tuple[Callable[..., int], tuple]) -> tuple[str, int, str]:
    function, job = call
    try:
        return job[0], function(*job), ""
    except Exception as error:  # reported in the summary; one bad video does not stop the run
        return job[0], 0, f"{type(error).__name__}: {error}"


def _collect(results, summary: JobSummary, bar: tqdm) -> None:
    for name, units, error in results:
        if error:
            summary.failures[name] = error
        else:
            summary.done += 1
            summary.units += units
        bar.set_postfix({summary.unit.split()[-1]: summary.units, "failed": len(summary.failures)}, refresh=False)
        bar.update()
