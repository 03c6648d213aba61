"""The training step with domain-adversarial training (DANN) against without, same model, same run.

    .venv/bin/python benchmarks/dann.py [--frames 16 --size 56 --width 0.1875 --batch 8 --device cpu --threads 1]

A DANN step runs the labelled source batch and an unlabelled target batch of the same size through
the model in one forward, plus the domain classifier behind the gradient reversal
(rev2net.train.DomainTraining); its cost is the model on twice the clips, so the comparison is
per source clip (what a sweep pays for an epoch of the same source data) and per clip processed.
Steps alternate between the two so drifts in machine load hit both alike; medians are printed.
Issue target: <= 1.15x the source-only step. With equal source and target batches (DANN's pairing,
the default) a step trains on twice the clips, so it is met per clip processed; `--target-batch`
(adapt.target_batch_size) trades target clips per step for step time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from rev2net import registry  # noqa: E402
from rev2net.dann import build_domain_adversary  # noqa: E402
from rev2net.data.config import DataConfig  # noqa: E402
from rev2net.spec import LossConfig, TrainerConfig  # noqa: E402
from rev2net.train import DomainTraining, _train_epoch, build_optimizer, seed_everything  # noqa: E402


class _Batches:
    """A loader of identical random batches (no data loading in the measurement)."""

    def __init__(self, batch: dict, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self):
        return iter([self.batch] * self.steps)

    def __len__(self) -> int:
        return self.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--width", type=float, default=0.1875)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--variants", default=f"{registry.REV2NET},{registry.I3D}")
    p.add_argument("--target-batch", type=int, default=0, help="target clips per step (0: --batch)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = (args.batch, 3, args.frames, args.size, args.size)
    data = DataConfig(frames=args.frames, crop_size=args.size, short_side=args.size, flow_downsample=2)
    print(f"input (B, C, T, H, W) = {shape}, width {args.width}, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} one-step epochs each")
    print(f"target clips per step: {args.target_batch or args.batch}")
    print(f"{'variant':<10}{'source only':>14}{'with DANN':>12}{'step ratio':>12}{'per clip':>10}")
    for name in args.variants.split(","):
        v = registry.variant(name)
        loss = LossConfig(**{k.removeprefix("loss."): x for k, x in v.overrides.items() if k.startswith("loss.")})
        seed_everything(0)
        model = registry.build(registry.model_config(name, width=args.width, bn_momentum=0.1), 6, data).to(device)
        source = {"frames": torch.randint(0, 256, shape, dtype=torch.uint8), "label": torch.randint(0, 6, (args.batch,)),
                  "flow": torch.randn(args.batch, 2, args.frames - 1, args.size // 2, args.size // 2).half()}
        target = {"frames": torch.randint(0, 256, (args.target_batch or args.batch, *shape[1:]), dtype=torch.uint8)}
        adapt = DomainTraining(build_domain_adversary(model.num_features, width=args.width).to(device),
                               _Batches(target, 1), weight=1.0)
        plain_opt = build_optimizer(model, TrainerConfig(optimizer="adamw", lr=1e-4))
        dann_opt = build_optimizer(torch.nn.ModuleDict({"m": model, "a": adapt.adversary}),
                                   TrainerConfig(optimizer="adamw", lr=1e-4))
        cfg = TrainerConfig(optimizer="adamw")
        times = {"plain": [], "dann": []}
        for step in range(args.steps + 2):
            for kind in ("plain", "dann"):
                started = time.perf_counter()
                _train_epoch(model, _Batches(source, 1), plain_opt if kind == "plain" else dann_opt, cfg, loss,
                             device, 1, adapt=adapt if kind == "dann" else None, progress=(step, args.steps + 2))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if step >= 2:
                    times[kind].append(time.perf_counter() - started)
        plain, dann = statistics.median(times["plain"]), statistics.median(times["dann"])
        clips = (args.batch + (args.target_batch or args.batch)) / args.batch
        print(f"{name:<10}{plain * 1e3:>12.1f}ms{dann * 1e3:>10.1f}ms{dann / plain:>11.2f}x{dann / plain / clips:>9.2f}x")


if __name__ == "__main__":
    main()
