"""The published numbers the tables can show beside ours (top-1 accuracy, %), with their sources.

Transcribed from the papers: Yao, Wang et al., "Multi-Task Learning of Generalizable
Representations for Video Action Recognition", ICME 2020 ("2020"), and Wang, Yao et al., "Reversing
Two-Stream Networks with Decoding Discrepancy Penalty for Robust Action Recognition", arXiv 2018 ("2018"). They are the papers' results on UCF101 / HMDB51 with the full
I3D at 32x224x224, not something this code reproduced; every table labels them as the paper's.
"""

from __future__ import annotations

from rev2net import registry as R

# Yao et al. 2020, Table 2 (ImageNet-pretrained, RGB input); the same numbers are the 2018 paper's
# Table 5 ablation rows. Keys are registered variants (rev2net.registry).
ABLATION = {
    "source": "Yao et al. 2020, Table 2 (ImageNet pretraining, RGB)",
    "columns": {"ucf101": "UCF101", "hmdb51": "HMDB51"},
    "rows": {
        R.REV2NET: {"ucf101": 94.6, "hmdb51": 71.1},
        R.NO_FRAME_DECODER: {"ucf101": 93.8, "hmdb51": 69.6},
        R.NO_FLOW_DECODER: {"ucf101": 93.1, "hmdb51": 67.5},
        R.NO_DDP: {"ucf101": 93.3, "hmdb51": 69.7},
        R.I3D: {"ucf101": 84.5, "hmdb51": 49.8},
    },
}

# Wang et al. 2018, Table 3 (Rev2Net and I3D, RGB) and Table 1 (I3D flow, TSN flow), UCF101.
# Keys of each row are the shuffle protocols; None where the paper has "-".
SHUFFLE = {
    "source": "Wang et al. 2018, Tables 1 and 3 (UCF101)",
    "rows": {
        "Rev2Net (RGB)": {"none": 94.6, "long_term": 92.3, "short_term": 91.8, "complete": 60.3},
        "I3D (RGB)": {"none": 84.5, "long_term": 76.8, "short_term": 77.6, "complete": 65.4},
        "I3D (flow)": {"none": 90.6, "long_term": 73.9, "short_term": 73.2, "complete": 51.2},
        "TSN (flow)": {"none": 86.85, "long_term": None, "short_term": 78.64, "complete": 59.55},
    },
}

# Yao et al. 2020, Table 5: cross-dataset top-1 with DANN, 16 shared UCF101/HMDB51 classes.
# Keys of each row are (source dataset, target dataset) as data.name / data.eval_name spell them.
CROSS_DATASET = {
    "source": "Yao et al. 2020, Table 5 (with DANN, 16 shared classes)",
    "rows": {
        "Rev2Net (RGB)": {("hmdb51", "ucf101"): 63.1, ("ucf101", "hmdb51"): 46.8},
        "I3D (RGB)": {("hmdb51", "ucf101"): 56.4, ("ucf101", "hmdb51"): 41.0},
        "TSN (RGB)": {("hmdb51", "ucf101"): 58.5, ("ucf101", "hmdb51"): 40.1},
        "TSM (RGB)": {("hmdb51", "ucf101"): 58.9, ("ucf101", "hmdb51"): 41.2},
        "I3D (RGB + flow)": {("hmdb51", "ucf101"): 57.9, ("ucf101", "hmdb51"): 41.5},
        "TSN (RGB + flow)": {("hmdb51", "ucf101"): 60.9, ("ucf101", "hmdb51"): 40.3},
        "TSM (RGB + flow)": {("hmdb51", "ucf101"): 61.2, ("ucf101", "hmdb51"): 41.5},
    },
}

# Yao et al. 2020, Sec. 4.2: the weights the coarse-to-fine search found.
OPTIMUM = {
    "source": "Yao et al. 2020, Sec. 4.2",
    "weights": {"loss.alpha": 0.01, "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 0.1},
}
