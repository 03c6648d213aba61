"""Where a stage's trials run: the Ray address, shared storage, resources per trial, concurrency.

On a cluster (`ray.address=auto` inside it, or ray://head:10001): the trials' checkpoints and
Tune's state go to `ray.storage_path`, which every node must reach (a shared folder, checked
before the first trial, or an object store such as s3://); MLflow credentials set in the driver's
environment reach the trials through Ray's runtime environment; a node lost mid-sweep costs its
trials one retry each, from their last checkpoints, on the nodes that remain.

`check_ray_address`, `trial_resources`, `max_concurrency` and `local_resources` (on this machine)
import no Ray (the dry run uses them); `start`, `check_shared_storage` and the cluster's resources do.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import socket
import uuid
from typing import Any, Optional

from omegaconf import DictConfig

from orchestration.errors import ConfigError

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in a job's entrypoint: the job's runtime env


# A gRPC method each kind of Ray endpoint answers (an empty request is a valid protobuf message):
# the GCS of a cluster (host:port, e.g. head:6379) and the Ray Client server (ray://head:10001).
GCS_PROBE = "/ray.rpc.NodeInfoGcsService/GetClusterId"
CLIENT_PROBE = "/ray.rpc.RayletDriver/ClusterInfo"


def check_ray_address(address: Optional[str], timeout_s: float = 5.0) -> None:
    """An explicit Ray address must be a Ray cluster before anything starts (ray.init would retry
    for minutes, whatever answers there): it accepts a TCP connection and answers a Ray gRPC call,
    each within `timeout_s`."""
    if address in (None, "", "local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address={address!r} is not host:port, ray://host:port, auto or null")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(f"Ray cluster at ray.address={address!r} is unreachable ({e}); start it or fix ray.address") from e
    client = address.startswith("ray://")
    problem = _ray_answer(hostport, CLIENT_PROBE if client else GCS_PROBE, timeout_s)
    if problem:
        what = "a Ray Client server (ray://, port 10001 by default)" if client else \
            "a Ray cluster's GCS (the head's port, 6379 by default; ray://host:10001 for Ray Client)"
        raise ConfigError(f"ray.address={address!r} answers but is not {what}: {problem}; fix ray.address")


def _ray_answer(hostport: str, method: str, timeout_s: float) -> Optional[str]:
    """None when `method` answers at `hostport` within `timeout_s`, else what went wrong. Any
    answer of the method counts (an authentication refusal too); a server that does not speak
    gRPC, or does not know the method, does not."""
    import grpc

    channel = grpc.insecure_channel(hostport, options=[("grpc.enable_retries", 0)])
    try:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        call(b"", timeout=timeout_s)
        return None
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return "a gRPC server without Ray's services"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                    grpc.StatusCode.UNKNOWN):
            detail = (e.details() or "").splitlines()[0] if e.details() else ""
            return f"no Ray handshake ({code.name.lower()}{': ' + detail[:120] if detail else ''})"
        return None  # a Ray server that refused this caller (e.g. UNAUTHENTICATED) is still Ray
    finally:
        channel.close()


def runtime_env() -> Optional[dict[str, Any]]:
    """The trials' runtime environment: the MLflow credentials set here, when there are any (workers
    on other nodes do not inherit this process's environment). Inside a Ray job, variables that the
    job's own runtime environment already sets are left to it (Ray refuses to merge a repeated one)."""
    from orchestration import tracking  # mlflow: not for the dry run

    env = tracking.worker_env_vars()
    if os.environ.get(JOB_CONFIG_ENV):
        taken = (json.loads(os.environ[JOB_CONFIG_ENV]).get("runtime_env") or {}).get("env_vars") or {}
        env = {k: v for k, v in env.items() if k not in taken}
    return {"env_vars": env} if env else None


def start(cfg: DictConfig) -> None:
    """Connect to the configured Ray cluster, or start a new local one ("local": never one found in
    /tmp/ray or RAY_ADDRESS), unless this process is connected already."""
    import ray

    if ray.is_initialized():
        return
    if cfg.ray.address is None:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
                 include_dashboard=cfg.ray.include_dashboard, logging_level=logging.WARNING, runtime_env=runtime_env())
    else:
        ray.init(address=cfg.ray.address, logging_level=logging.WARNING, runtime_env=runtime_env())


def _node_sees(path: str) -> bool:
    return os.path.exists(path)


def check_shared_storage(storage_path: str) -> None:
    """On a cluster of several machines, a local `ray.storage_path` must be one folder that every
    node reads (checkpoints written on one node are restored on another after a failure): a marker
    written here must be visible from every alive node on another machine."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "://" in storage_path or ray.util.client.ray.is_connected():  # object store; or a Ray Client driver,
        return                                                          # which need not see the cluster's disks
    here = ray.util.get_node_ip_address()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["NodeManagerAddress"] != here]
    if not nodes:
        return
    os.makedirs(storage_path, exist_ok=True)
    marker = os.path.join(storage_path, f".rev2net-shared-{uuid.uuid4().hex}")
    open(marker, "w").close()
    try:
        check = ray.remote(num_cpus=0)(_node_sees)
        refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]:
                check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
                for n in nodes}
        blind = [name for name, ref in refs.items() if not ray.get(ref, timeout=120)]
    finally:
        os.remove(marker)
    if blind:
        raise ConfigError(f"ray.storage_path={storage_path} is not shared: node(s) {', '.join(blind)} do not see it; "
                          "use a folder every node mounts, or an object store such as s3://bucket/ray_results")


def gpu_count() -> int:
    """NVIDIA GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES when set,
    else the GPUs the driver lists under /proc/driver/nvidia/gpus (Ray detects them the same way)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/proc/driver/nvidia/gpus/*"))


def local_resources(cfg: DictConfig) -> tuple[float, float]:
    """(CPUs, GPUs) the trials can use: this machine's (or what ray.num_* offers), else the cluster's."""
    if cfg.ray.address is None:
        cpus = cfg.ray.num_cpus if cfg.ray.num_cpus is not None else os.cpu_count() or 1
        gpus = cfg.ray.num_gpus if cfg.ray.num_gpus is not None else gpu_count()
        return float(cpus), float(gpus)
    import ray
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def trial_resources(cfg: DictConfig, cluster_gpus: float) -> dict[str, float]:
    gpus = cfg.trial.gpus if cfg.trial.gpus is not None else (1.0 if cluster_gpus > 0 else 0.0)
    return {"cpu": float(cfg.trial.cpus), "gpu": float(gpus)}


def max_concurrency(cfg: DictConfig, resources: dict[str, float], cluster: tuple[float, float]) -> int:
    cpus, gpus = cluster
    limits = [int(cpus // resources["cpu"]) if resources["cpu"] else math.inf]
    if resources["gpu"]:
        limits.append(int(gpus // resources["gpu"]))
    if cfg.search.max_concurrent:
        limits.append(cfg.search.max_concurrent)
    return int(max(1, min(limits)))
