"""Rev2Net's video data pipeline: datasets, flow targets, the generated dataset, evaluation protocols.

    config      DataConfig (cfg.data), SyntheticConfig
    layouts     UCF101 / HMDB51 / Kinetics-400 / generic split files, class indices, class maps
    video       decoding clip windows with decord
    flow        TV-L1 / Farneback extraction CLI, flow JPEG storage
    transforms  crop / resize / flip applied identically to frames and flow
    shuffle     frame-shuffle protocols (none, long_term, short_term, complete)
    datasets    ClipDataset, EvalDataset, EpochSampler, build_loaders, build_eval_loader
    synthetic   the generated motion dataset, ensure_synthetic, check_params, flow_epe
    check       check_dataset and its CLI
    resize      a copy of a dataset at a lower resolution (resize_dataset and its CLI)
    jobs        work over every core with a progress bar (check), failures by video (flow, resize)

Names are imported on first use, so `python -m rev2net.data.flow` and friends start clean.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": "config", "SyntheticConfig": "config",
    "DataBundle": "datasets", "build_loaders": "datasets", "build_eval_loader": "datasets",
    "ClipDataset": "datasets", "EvalDataset": "datasets", "EpochSampler": "datasets", "ClipSpec": "datasets",
    "FlowMissingError": "datasets", "UnreadableVideoWarning": "datasets",
    "LayoutError": "layouts", "load_split": "layouts", "load_class_map": "layouts",
    "ensure_synthetic": "synthetic", "check_params": "synthetic", "flow_epe": "synthetic",
    "check_dataset": "check", "CheckReport": "check",
    "extract_flow": "flow", "PROTOCOLS": "shuffle", "resize_dataset": "resize",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rev2net.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rev2net.data.{_EXPORTS[name]}"), name)
