"""DCD's size and cost per clip against RGB I3D's, counted the way rev2net.summary counts them.

    .venv/bin/python benchmarks/dcd_cost.py                      # DCD 8x224x224 vs I3D 32x224x224, width 1
    .venv/bin/python benchmarks/dcd_cost.py --size 112 --json

Every model is built on the meta device and its eval-mode forward traced by
torch.utils.flop_counter.FlopCounterMode: multiply-adds = counted FLOPs / 2, per clip. The count
covers convolutions, linear layers, matrix products and DCD's cost volume (a custom op with its
own formula); elementwise work (BatchNorm, pooling, softmax, the bilinear warp) is not counted,
for I3D as for DCD. Rows: the DCD variants (rev2net.dcd.BRANCH_SETS) at both displacement
strides, per branch where it helps to see where the cost goes, then I3D.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rev2net.dcd import BRANCH_SETS, build_dcd  # noqa: E402
from rev2net.i3d import InceptionI3d  # noqa: E402


def cost(build, frames: int, size: int) -> dict[str, Any]:
    """Parameters and eval-mode multiply-adds per clip of build(): in total and, for DCD, by part
    (the stem, each branch's trunk, and the cost volume with the soft-argmax)."""
    with torch.device("meta"):
        model = build()
        x = torch.zeros(1, 3, frames, size, size)
    model.eval()
    with FlopCounterMode(display=False, depth=4) as counter:
        model(x)
    total = counter.get_total_flops() // 2
    parts: dict[str, int] = {}
    if hasattr(model, "branches"):  # DCD: the trunks run block by block, so sum each one's blocks
        by_module = counter.get_flop_counts()
        parts["stem"] = sum(by_module.get("DCD.stem", {}).values()) // 2
        for branch in model.branches:
            parts[branch] = sum(sum(ops.values()) for name, ops in by_module.items()
                                if name.startswith(f"DCD.branches.{branch}.") and name.count(".") == 3) // 2
        parts["cost volume + soft-argmax"] = total - sum(parts.values())
    return {
        "input": [3, frames, size, size],
        "params": sum(p.numel() for p in model.parameters()),
        "macs": total,
        "macs_by_module": parts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-classes", type=int, default=101)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--dcd-frames", type=int, default=8)
    parser.add_argument("--i3d-frames", type=int, default=32)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--max-displacement", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows: dict[str, dict[str, Any]] = {}
    for stride in (1, 2):
        for name, branches in BRANCH_SETS.items():
            if stride == 2 and branches == ("static",):
                continue  # no displacement maps: the same network at both strides
            rows[f"{name} (displacement stride {stride})"] = cost(
                lambda: build_dcd(args.num_classes, frames=args.dcd_frames, branches=branches, width=args.width,
                                  max_displacement=args.max_displacement, displacement_stride=stride),
                args.dcd_frames, args.size)
    rows["i3d (RGB)"] = cost(lambda: InceptionI3d(args.num_classes, width=args.width), args.i3d_frames, args.size)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"width {args.width}, {args.num_classes} classes, max_displacement {args.max_displacement}; "
          "multiply-adds per clip (eval forward)")
    for name, row in rows.items():
        t, s = row["input"][1], row["input"][2]
        print(f"{name:<48} {t:>2}x{s}x{s}  params {row['params']:>12,}  multiply-adds {row['macs'] / 1e9:8.2f} G")
        if name.startswith("dcd ("):
            for part, macs in row["macs_by_module"].items():
                print(f"    {part:<44} {macs / 1e9:8.2f} G")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
