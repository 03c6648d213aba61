"""One trial, end to end, in plain PyTorch: data -> model -> `fit` -> final evaluations.

No Ray and no MLflow here: whatever runs trials (orchestration/trainable.py, a notebook, a test)
hands in a `TrialSpec`, an optional state to resume from and an `on_epoch_end` callback, and
receives every epoch's report (metrics + checkpointable state) through it.

What a trial reads follows its model family (rev2net.registry: the RGB clip, flow stacks, one
frame per segment, flow targets). Every epoch it is validated on the split's validation videos
(`val/*`: selection, early stopping); the test list is scored once, at the end of the last epoch,
before that epoch is reported (a scheduler may stop the trial as soon as it is): `test/top1`,
`test/top5`, `test/loss`, then each requested frame-shuffle protocol (the 2018 paper's Tables 1
and 3) as `shuffle/<protocol>/top1|top5` ("none" is the plain test), and with `data.eval_name`
(cross-dataset, e.g. UCF101 -> HMDB51 through a class map) the target's test list as
`cross/top1|top5`. Each of these evaluations' per-video results ride on the final report
(`EpochReport.predictions`, keyed "test", "shuffle/<protocol>", "cross").

With `adapt.name=dann`, training is domain-adversarial (Ganin & Lempitsky 2015) towards the
target's unlabelled training clips (rev2net.train.DomainTraining; their labels are never loaded).

Data-parallel trials (`processes=N`, N > 1): one trial trains on N processes of this machine with
DistributedDataParallel, one GPU each on CUDA (NCCL), or N CPU processes (gloo). The calling
process is rank 0: it reads `resume`, calls `on_epoch_end` (so the caller's checkpointing and
logging stay exactly as for one process) and runs the final evaluations; ranks 1..N-1 are
spawned here, die with it, and are stopped when it returns or raises (e.g. a scheduler stopping
the trial inside `on_epoch_end`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import tempfile
from datetime import timedelta
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from rev2net import registry
from rev2net.data.config import MOTIONNET_SOURCE, DataConfig
from rev2net.data.datasets import ClipSpec, build_eval_loader, build_loaders, build_target_loader
from rev2net.registry import check_spec
from rev2net.spec import TrialSpec
from rev2net.train import DivergedError, DomainTraining, EpochReport, evaluate, fit, resolve_device, seed_everything

DDP_TIMEOUT = timedelta(minutes=10)  # a collective waiting this long means a rank is gone


def run_trial(spec: TrialSpec, *, resume: Optional[dict] = None,
              on_epoch_end: Optional[Callable[[EpochReport], None]] = None,
              shuffle_protocols: Sequence[str] = (), processes: int = 1) -> dict[str, float]:
    """Train one Rev2Net trial (continuing `resume`), report every epoch, return the last epoch's
    metrics; data-parallel over `processes` processes of this machine when it is > 1."""
    check_spec(spec)
    if processes < 1:
        raise ValueError(f"processes={processes} must be >= 1")
    if processes > 1:
        return _data_parallel(spec, resume, on_epoch_end, shuffle_protocols, processes)
    return _train(spec, resume=resume, on_epoch_end=on_epoch_end, shuffle_protocols=shuffle_protocols)


def _clip_spec(spec: TrialSpec) -> ClipSpec:
    needs = registry.data_needs(spec.model, spec.loss)
    return ClipSpec.from_config(spec.data, segments=needs.segments, flow_pairs=needs.flow_pairs, rgb=needs.rgb)


def _domain_training(spec: TrialSpec, model: torch.nn.Module, data_cfg: DataConfig, clip: ClipSpec,
                     device: torch.device, rank: int, world: int) -> Optional[DomainTraining]:
    if spec.adapt.name == "none":
        return None
    from rev2net.dann import build_domain_adversary

    flow_targets = spec.adapt.target_decoders and data_cfg.flow
    target = build_target_loader(data_cfg, seed=spec.trainer.seed, spec=clip, flow_targets=flow_targets,
                                 batch_size=spec.adapt.target_batch_size, device_is_cuda=device.type == "cuda",
                                 rank=rank, num_replicas=world)
    adversary = build_domain_adversary(model.num_features, width=spec.model.width, gamma=spec.adapt.gamma)
    return DomainTraining(adversary, target, weight=spec.adapt.domain_weight,
                          target_decoders=spec.adapt.target_decoders)


def _motionnet_targets(data: DataConfig, device: torch.device) -> Optional[Callable]:
    """With data.flow_source=motionnet:<ckpt>, the flow targets of a training clip computed in the
    step by the frozen MotionNet (Zhu et al. 2018) on the device, from the clip the model sees (so
    through the same crop, flip and scaling as stored flow): frames (B, 3, T, H, W) -> (B, 2, T-1, h, w)
    in pixels of the decoder's grid, what the loader would have delivered."""
    if not data.flow_source.startswith(MOTIONNET_SOURCE):
        return None
    from rev2net.model import flow_size
    from rev2net.motionnet import flow_targets, load_motionnet

    motionnet = load_motionnet(data.flow_source[len(MOTIONNET_SOURCE):]).to(device).eval().requires_grad_(False)
    return lambda frames: flow_targets(motionnet, frames, flow_size(*frames.shape[2:])[1:])


def _predictions(result: dict, loader) -> dict:
    """evaluate()'s per-video arrays, keyed by the videos' ids (their paths in the dataset); a video
    that stood in for an unreadable one is counted once."""
    raw = result.pop("predictions")
    records = loader.dataset.records
    _, first = np.unique(raw["index"], return_index=True)
    keep = np.sort(first)
    return {"video_id": [records[i].key for i in raw["index"][keep].tolist()], "label": raw["label"][keep],
            "pred": raw["top5"][keep, 0], "top5": raw["top5"][keep], "label_score": raw["label_score"][keep]}


def final_evaluations(model: torch.nn.Module, spec: TrialSpec, clip: ClipSpec, device: torch.device,
                      shuffle_protocols: Sequence[str]) -> tuple[dict[str, float], dict[str, dict]]:
    """The evaluations a trial runs once, after its last epoch: metrics and per-video predictions."""
    metrics: dict[str, float] = {}
    predictions: dict[str, dict] = {}
    inputs = registry.input_keys(registry.data_needs(spec.model, spec.loss))
    cuda = device.type == "cuda"

    def run(name: str, **where) -> dict:
        loader = build_eval_loader(spec.data, spec=clip, seed=spec.trainer.seed, device_is_cuda=cuda, **where)
        result = evaluate(model, loader, device, amp=spec.trainer.amp, inputs=inputs, predictions=True)
        predictions[name] = _predictions(result, loader)
        return result

    test = run("test")
    metrics.update({"test/top1": test["top1"], "test/top5": test["top5"], "test/loss": test["loss"]})
    for protocol in shuffle_protocols:
        if protocol == "none":  # the plain test
            scores, predictions["shuffle/none"] = test, predictions["test"]
        else:
            scores = run(f"shuffle/{protocol}", protocol=protocol)
        metrics[f"shuffle/{protocol}/top1"], metrics[f"shuffle/{protocol}/top5"] = scores["top1"], scores["top5"]
    if spec.data.eval_name:  # cross-dataset: the target dataset's test list, through the class map
        scores = run("cross", cross_dataset=True)
        metrics["cross/top1"], metrics["cross/top5"] = scores["top1"], scores["top5"]
    return metrics, predictions


def _train(spec: TrialSpec, *, resume: Optional[dict], on_epoch_end: Optional[Callable[[EpochReport], None]],
           shuffle_protocols: Sequence[str], rank: int = 0, world: int = 1) -> dict[str, float]:
    """One process's part of a trial: all of it, or rank `rank` of a DDP group of `world`."""
    needs = registry.data_needs(spec.model, spec.loss)
    # Flow targets cost loader time; read them only when the flow term is trained (and not computed).
    data_cfg = dataclasses.replace(spec.data, flow=spec.data.stored_flow_targets and needs.flow_targets)
    clip = _clip_spec(spec)
    device = resolve_device(spec.trainer.device)
    if world > 1 and device.type == "cuda":  # one GPU per rank, of those this process sees
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    seed_everything(spec.trainer.seed)  # identical initial weights for every trial with this seed
    data = build_loaders(data_cfg, seed=spec.trainer.seed, spec=clip, device_is_cuda=device.type == "cuda",
                         rank=rank, num_replicas=world)
    model = registry.build(spec.model, data.num_classes, spec.data)
    adapt = _domain_training(spec, model, data_cfg, clip, device, rank, world)
    flow_source = _motionnet_targets(spec.data, device) if needs.flow_targets else None
    max_epochs = spec.trainer.max_epochs

    def report(epoch_report: EpochReport) -> None:
        if epoch_report.last or epoch_report.epoch >= max_epochs:
            metrics, epoch_report.predictions = final_evaluations(model, spec, clip, device, shuffle_protocols)
            epoch_report.metrics.update(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch_report)

    history = fit(model, data.train, data.val, spec.trainer, spec.loss, resume=resume,
                  on_epoch_end=report if rank == 0 else None, device=device, distributed=world > 1,
                  inputs=registry.input_keys(needs), adapt=adapt, flow_source=flow_source)
    return dict(history[-1]) if history else {}


# ------------------------------------------------------------------------- data-parallel trials

def _die_with_parent() -> None:
    """A rank must not outlive the trial process (killed by Ray, its node lost): on Linux the kernel
    sends SIGKILL when the thread that spawned it ends."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _rank_main(spec: TrialSpec, resume_file: Optional[str], rank: int, world: int, backend: str, init_method: str,
               threads: int, parent: int, ready) -> None:
    """Entry point of ranks 1..world-1 (a spawned process)."""
    import torch.distributed as dist

    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above
        return
    torch.set_num_threads(threads)
    resume = torch.load(resume_file, map_location="cpu", weights_only=False) if resume_file else None
    ready.put(rank)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world, timeout=DDP_TIMEOUT)
    try:
        _train(spec, resume=resume, on_epoch_end=None, shuffle_protocols=(), rank=rank, world=world)
    finally:
        dist.destroy_process_group()


def _wait_until_started(ranks: list, ready) -> None:
    """Every spawned rank is up (imports done), or one died trying: then say so now rather than
    wait for it in the rendezvous until DDP_TIMEOUT."""
    import queue

    waiting = {int(p.name.removeprefix("rev2net-rank")) for p in ranks}
    while waiting:
        try:
            waiting.discard(ready.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in ranks if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"data-parallel trial: {dead[0].name} exited with code {dead[0].exitcode} while "
                                   "starting (its traceback is in this trial's log)") from None


def _data_parallel(spec: TrialSpec, resume: Optional[dict], on_epoch_end: Optional[Callable[[EpochReport], None]],
                   shuffle_protocols: Sequence[str], processes: int) -> dict[str, float]:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    cuda = resolve_device(spec.trainer.device).type == "cuda"
    if cuda and torch.cuda.device_count() < processes:
        raise ValueError(f"a trial on {processes} processes needs {processes} GPUs, this process sees "
                         f"{torch.cuda.device_count()}: set trial.gpus={processes} (or trial.processes to the GPUs given)")
    backend = "nccl" if cuda else "gloo"
    previous_threads = torch.get_num_threads()   # rank 0 runs here: the process gets its threads back after
    threads = max(1, previous_threads // processes)
    with tempfile.TemporaryDirectory(prefix="rev2net-ddp-") as rendezvous:
        init_method = f"file://{rendezvous}/store"  # a file store: no port to pick, no port to collide
        resume_file = None
        if resume is not None:  # a private copy per rank: tensors sent to a child would share memory with
            resume_file = f"{rendezvous}/resume.pt"  # ours, and the optimizers would update one momentum twice
            torch.save(resume, resume_file)
        ctx = mp.get_context("spawn")  # never fork a process that runs threads (Ray's, the loader's)
        ready = ctx.Queue()
        ranks = [ctx.Process(target=_rank_main, name=f"rev2net-rank{r}",
                             args=(spec, resume_file, r, processes, backend, init_method, threads, os.getpid(), ready))
                 for r in range(1, processes)]
        for p in ranks:
            p.start()
        finished = False
        try:
            _wait_until_started(ranks, ready)
            torch.set_num_threads(threads)
            dist.init_process_group(backend, init_method=init_method, rank=0, world_size=processes,
                                    timeout=DDP_TIMEOUT)
            try:
                result = _train(spec, resume=resume, on_epoch_end=on_epoch_end, shuffle_protocols=shuffle_protocols,
                                rank=0, world=processes)
            finally:
                dist.destroy_process_group()
            finished = True
            return result
        except DivergedError:
            raise  # every rank stopped at the same step (the loss terms are summed over the ranks)
        except RuntimeError as error:  # a collective failed: name the rank that died, if one did
            for p in ranks:
                p.join(timeout=2)
            dead = [(p.name, p.exitcode) for p in ranks if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"data-parallel trial: {dead[0][0]} exited with code {dead[0][1]} "
                                   f"(its traceback is in this trial's log): {error}") from error
            raise
        finally:
            torch.set_num_threads(previous_threads)
            for p in ranks:
                p.join(timeout=60 if finished else 0)
                if p.is_alive():  # rank 0 stopped early: the others wait in a collective that never comes
                    p.kill()
                    p.join()
