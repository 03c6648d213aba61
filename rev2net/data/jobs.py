"""Work spread over every core, with a progress bar.

`map_with_progress` maps a function over items in a process per core (the dataset check uses it
directly); `run_jobs`, built on it, runs one job per video as the flow extraction and the dataset
resize do, with a summary that lists failures by video.

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
from typing import Any, Callable, Iterable, Iterator, Sequence

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


def map_with_progress(function: Callable[[Any], Any], items: Sequence, *, desc: str, unit: str = "video",
                      workers: int | None = None, chunksize: int | None = None, parallel_from: int = 2,
                      progress: bool = True, postfix: Callable[[], dict] | None = None) -> Iterator:
    """Yield `function(item)` for every item, in order, advancing a progress bar.

    `workers` processes (default: every core, at most one per item) started with "spawn" (safe beside
    threads: decord, torch, tqdm) and one OpenCV thread each; `function` is pickled to them, so it is a
    module-level function. One worker, or fewer than `parallel_from` items, run in this process, with
    one OpenCV thread too. `chunksize`: items per task (default: a few tasks per worker, at most 8
    items each). `postfix`, if given, is called after the caller has taken each result, to label the bar.
    """
    workers = min(workers or os.cpu_count() or 1, max(len(items), 1))
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, smoothing=0.1)
    try:
        if workers == 1 or len(items) < parallel_from:
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                yield from _advance(map(function, items), bar, postfix)
            finally:
                cv2.setNumThreads(threads)
        else:
            context = multiprocessing.get_context("spawn")
            chunksize = chunksize or max(1, min(8, len(items) // (8 * workers)))
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=worker_init) as pool:
                yield from _advance(pool.map(function, items, chunksize=chunksize), bar, postfix)
    finally:
        bar.close()


def _advance(results: Iterable, bar: tqdm, postfix: Callable[[], dict] | None) -> Iterator:
    for result in results:
        yield result
        if postfix is not None:
            bar.set_postfix(postfix(), refresh=False)
        bar.update()


def run_jobs(function: Callable[..., int], jobs: list[tuple], summary: JobSummary, *, workers: int | None = None,
             progress: bool = True) -> JobSummary:
    """Run `function(*job)` for every job with `workers` processes (default: every core; 1 runs in
    this process), through `map_with_progress`; fills and returns `summary`."""
    start = time.perf_counter()
    calls = [(function, job) for job in jobs]

    def status() -> dict:
        return {summary.unit.split()[-1]: summary.units, "failed": len(summary.failures)}

    for name, units, error in map_with_progress(_call, calls, desc=summary.what, workers=workers, progress=progress,
                                                postfix=status):
        if error:
            summary.failures[name] = error
        else:
            summary.done += 1
            summary.units += units
    summary.seconds = time.perf_counter() - start
    return summary


def _call(call: tuple[Callable[..., int], tuple]) -> tuple[str, int, str]:
    function, job = call
    try:
        return job[0], function(*job), ""
    except Exception as error:  # reported in the summary; one bad video does not stop the run
        return job[0], 0, f"{type(error).__name__}: {error}"
