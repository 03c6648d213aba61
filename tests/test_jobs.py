"""rev2net/data/jobs.py: work spread over processes comes back complete and in order, small inputs
stay in this process, and a failing job is reported by name without stopping the others."""

from __future__ import annotations

import os

import cv2

from rev2net.data.jobs import JobSummary, map_with_progress, run_jobs


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def _units_or_fail(name: str, units: int) -> int:
    if units < 0:
        raise ValueError(f"{name} is broken")
    return units


def test_map_with_progress_keeps_order_in_workers_and_in_this_process():
    items = list(range(20))
    threads = cv2.getNumThreads()
    alone = list(map_with_progress(_pid_and_square, items, desc="t", workers=2, parallel_from=21, progress=False))
    assert [r[1] for r in alone] == [x * x for x in items] and {r[0] for r in alone} == {os.getpid()}
    assert cv2.getNumThreads() == threads, "the in-process path restores OpenCV's threads"
    pooled = list(map_with_progress(_pid_and_square, items, desc="t", workers=2, progress=False))
    assert [r[1] for r in pooled] == [x * x for x in items], "results in the items' order"
    assert os.getpid() not in {r[0] for r in pooled}, "two workers and 20 items: worker processes"


def test_run_jobs_reports_failures_by_name_and_counts_the_rest():
    jobs = [("a.avi", 3), ("b.avi", -1), ("c.avi", 4)]
    summary = run_jobs(_units_or_fail, jobs, JobSummary("flow", "extracted", "frame pairs"), workers=2,
                       progress=False)
    assert (summary.done, summary.units) == (2, 7) and list(summary.failures) == ["b.avi"]
    assert summary.failures["b.avi"] == "ValueError: b.avi is broken" and "1 failed" in summary.report()


def test_the_bar_label_is_computed_after_the_caller_took_each_result():
    taken, labelled = [], []

    def postfix() -> dict:
        labelled.append(len(taken))
        return {"taken": len(taken)}

    for value in map_with_progress(abs, [-1, -2], desc="t", workers=1, progress=False, postfix=postfix):
        taken.append(value)
    assert taken == [1, 2] and labelled == [1, 2]
