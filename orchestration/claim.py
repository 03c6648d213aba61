"""One driver per sweep: an atomic claim, taken before the stage's parent run is opened.

Two identical commands started together (a scheduled run overlapping a manual one, a Slurm array
mistake) must not both run a sweep. Searching for a live parent run and then creating one is not
atomic, so a sweep is claimed first, with the one operation each storage does atomically:

  * `ray.storage_path` a folder (local, or shared by every node: NFS, Lustre, ...): a claim is a file
    `<experiment dir>/.claims/<sweep id>/<n>.claim` holding its driver (host, pid, since),
    written under a temporary name and then hard-linked (`os.link`) to its final name, which fails
    if the name exists. Creating a name is atomic on a local disk and on NFS alike (the classic
    NFS lock); the file is complete when it appears. Its mtime is the heartbeat.
  * `ray.storage_path` an object store (s3://, gs://): object stores have no atomic
    create-if-absent that every one of them honours, but the drivers share the MLflow tracking
    store, whose experiment names are unique (a database constraint, in SQLite and in the
    tracking server's PostgreSQL alike). A claim is an experiment `rev2net.claim:<experiment>/<sweep
    id>/<n>` created with its driver as tags in one transaction; `create_experiment` of a name that
    exists fails. Its heartbeat is a tag; a released claim is a deleted experiment (hidden in the UI).

Claims are numbered. The holder of a sweep is the highest-numbered claim; it is live while its
heartbeat (refreshed by a thread of the driver every `tracking.HEARTBEAT_S`) is younger than
`tracking.HEARTBEAT_STALE_S`, or, on the same machine, while its process exists. To claim: read the
highest claim n; if it is live, refuse (`SweepBusy`, naming host, pid and since when); else create
claim n + 1. Of drivers racing for the same n + 1 exactly one creates it; the others find it live on
their next look and refuse. A dead driver's claim is therefore taken over by creating the next
number, never by deleting or renaming anything another process might be reading. Releasing a claim
(at the end of the stage, or when it fails) makes it stale at once (mtime 0, or the experiment
deleted); claim files are a few hundred bytes each and stay, one per driver start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from orchestration import records, tracking
from orchestration.errors import SweepBusy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """The driver that holds (or held) a claim."""

    host: str
    pid: int
    since: float                 # unix time the claim was taken
    beat: float                  # unix time of its latest heartbeat (0: released)

    def alive(self, stale_s: float) -> bool:
        return tracking.driver_alive(f"{self.host}:{self.pid}", self.beat, stale_s)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"{self.host}:{self.pid} (since {since}, heartbeat {max(0, int(time.time() - self.beat))} s ago)"


def me() -> Holder:
    now = time.time()
    return Holder(socket.gethostname(), os.getpid(), now, now)


class FileSlots:
    """Claims as files in a folder (`os.link`: create-if-absent, atomic on local disks and NFS)."""

    def __init__(self, folder: str):
        self.folder = folder

    def where(self) -> str:
        return self.folder

    def _path(self, n: int) -> str:
        return os.path.join(self.folder, f"{n}.claim")

    def numbers(self) -> list[int]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return [int(m.group(1)) for m in map(re.compile(r"^(\d+)\.claim$").match, names) if m]

    def create(self, n: int, holder: Holder) -> bool:
        os.makedirs(self.folder, exist_ok=True)
        tmp = os.path.join(self.folder, f".{n}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "w") as f:
            json.dump({"host": holder.host, "pid": holder.pid, "since": holder.since}, f)
        os.utime(tmp, (holder.beat, holder.beat))  # the heartbeat: the mtime, which the link keeps
        try:
            os.link(tmp, self._path(n))
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def read(self, n: int) -> Optional[Holder]:
        try:
            with open(self._path(n)) as f:
                held = json.load(f)
            beat = os.stat(self._path(n)).st_mtime
        except FileNotFoundError:
            return None
        return Holder(held["host"], int(held["pid"]), float(held["since"]), beat)

    def touch(self, n: int) -> None:
        os.utime(self._path(n))

    def release(self, n: int) -> None:
        os.utime(self._path(n), (0, 0))


class MlflowSlots:
    """Claims as experiments of the tracking store (experiment names are unique in its database)."""

    def __init__(self, tracking_uri: str, key: str):
        self.client = tracking.client(tracking_uri)
        self.uri, self.prefix = tracking_uri, f"{records.CLAIM_EXPERIMENT_PREFIX}{key}/"

    def where(self) -> str:
        return f"{self.uri} (experiments {self.prefix}<n>)"

    def numbers(self) -> list[int]:
        from mlflow.entities import ViewType

        pattern = self.prefix.replace("%", "\\%").replace("'", "\\'")
        found, token = [], None
        while True:  # every page: one claim per driver start, over the sweep's whole life
            page = tracking.retry(lambda: self.client.search_experiments(
                view_type=ViewType.ALL, filter_string=f"name LIKE '{pattern}%'", max_results=1000, page_token=token),
                what="claims")
            found.extend(page)
            token = page.token
            if not token:
                break
        tail = [e.name[len(self.prefix):] for e in found if e.name.startswith(self.prefix)]
        return [int(t) for t in tail if t.isdigit()]

    def create(self, n: int, holder: Holder) -> bool:
        from mlflow.exceptions import MlflowException

        tags = {records.TAG_DRIVER: f"{holder.host}:{holder.pid}", records.TAG_DRIVER_SINCE: str(holder.since),
                records.TAG_HEARTBEAT: str(holder.beat)}
        try:  # a retry whose first try did create it (the answer was lost) finds it ours in `acquire`
            tracking.retry(lambda: self.client.create_experiment(self.prefix + str(n), tags=tags), what="claim")
            return True
        except MlflowException as e:
            if e.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise

    def read(self, n: int) -> Optional[Holder]:
        exp = tracking.retry(lambda: self.client.get_experiment_by_name(self.prefix + str(n)), what="claim")
        if exp is None:
            return None
        host, _, pid = exp.tags.get(records.TAG_DRIVER, ":0").rpartition(":")
        beat = 0.0 if exp.lifecycle_stage == "deleted" else float(exp.tags.get(records.TAG_HEARTBEAT, 0))
        return Holder(host, int(pid or 0), float(exp.tags.get(records.TAG_DRIVER_SINCE, 0)), beat)

    def _id(self, n: int) -> str:
        return tracking.retry(lambda: self.client.get_experiment_by_name(self.prefix + str(n)),
                              what="claim").experiment_id

    def touch(self, n: int) -> None:
        self.client.set_experiment_tag(self._id(n), records.TAG_HEARTBEAT, str(time.time()))

    def release(self, n: int) -> None:
        tracking.retry(lambda: self.client.delete_experiment(self._id(n)), what="release claim")


def slots_for(storage_path: str, experiment: str, sweep_id: str, tracking_uri: str):
    """Where a sweep's claims live: next to its Tune state when that is a folder, else in the tracking store."""
    if "://" in storage_path and not storage_path.startswith("file://"):
        return MlflowSlots(tracking_uri, f"{experiment}/{sweep_id}")
    folder = storage_path[len("file://"):] if storage_path.startswith("file://") else storage_path
    return FileSlots(os.path.join(folder, experiment, ".claims", sweep_id))


class Claim:
    """A claim held by this process; a daemon thread refreshes its heartbeat until `release`."""

    def __init__(self, slots, number: int, *, every_s: float):
        self.slots, self.number, self.every_s = slots, number, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="rev2net-claim-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.slots.touch(self.number)
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is harmless; the next one follows
                log.debug("claim heartbeat not written: %s", e)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self.slots.release(self.number)
        except Exception as e:  # noqa: BLE001 - the claim goes stale on its own
            log.warning("claim %s #%d not released (%s); it is free once its heartbeat is %.0f s old",
                        self.slots.where(), self.number, str(e).splitlines()[0] if str(e) else e,
                        tracking.HEARTBEAT_STALE_S)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(slots, *, stage: str, sweep_id: str, stale_s: float = tracking.HEARTBEAT_STALE_S,
            every_s: float = tracking.HEARTBEAT_S) -> Claim:
    """Claim the sweep, or raise SweepBusy naming the live driver that holds it."""
    holder = me()
    for _ in range(20):  # each round either creates a claim or finds one that someone else created
        top = max(slots.numbers(), default=0)
        if top:
            other = slots.read(top)
            if other is None:
                continue  # removed by hand meanwhile: look again
            if (other.host, other.pid, other.since) == (holder.host, holder.pid, holder.since):
                return Claim(slots, top, every_s=every_s)  # created by our own try whose answer was lost
            if other.alive(stale_s):
                raise tracking.busy(stage, sweep_id, other.describe())
            if other.beat > 0:
                log.warning("the %s stage (sweep %s) was held by %s, which is gone: taking it over", stage,
                            sweep_id, other.describe())
        if slots.create(top + 1, holder):
            return Claim(slots, top + 1, every_s=every_s)
    raise SweepBusy(f"the {stage} stage (sweep {sweep_id}) could not be claimed at {slots.where()}: "
                    "drivers kept taking it over; run one driver at a time")
