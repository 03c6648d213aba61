"""The published numbers the tables can show beside ours (top-1 accuracy, %), with their sources.

Transcribed from the papers: Yao, Wang et al., "Multi-Task Learning of Generalizable
Representations for Video Action Recognition", ICME 2020 ("2020"), and Wang, Yao et al., "Reversing
Two-Stream Networks with Decoding Discrepancy Penalty for Robust Action Recognition", arXiv 2018
("2018"); Zhu et al., "Hidden Two-Stream Convolutional Networks for Action Recognition" ("HTS");
Zhao, Xiong, Lin, "Recognize Actions by Disentangling Components of Dynamics", CVPR 2018 ("DCD").
They are the papers' results on UCF101 / HMDB51 / Kinetics with the full models, not something this
code reproduced; every table labels them as the paper's, with the source of each number.
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
    "source": "Yao et al. 2020, Tables 1 and 5 (with DANN, 16 shared classes)",
    "rows": {
        "Rev2Net (RGB)": {("hmdb51", "ucf101"): 63.1, ("ucf101", "hmdb51"): 46.8},
        "I3D (RGB)": {("hmdb51", "ucf101"): 56.4, ("ucf101", "hmdb51"): 41.0},
        "I3D (flow)": {("hmdb51", "ucf101"): 45.0, ("ucf101", "hmdb51"): 31.1},
        "TSN (flow)": {("hmdb51", "ucf101"): 33.2, ("ucf101", "hmdb51"): 23.0},
        "TSM (flow)": {("hmdb51", "ucf101"): 35.1, ("ucf101", "hmdb51"): 24.0},
        "TSN (RGB)": {("hmdb51", "ucf101"): 58.5, ("ucf101", "hmdb51"): 40.1},
        "TSM (RGB)": {("hmdb51", "ucf101"): 58.9, ("ucf101", "hmdb51"): 41.2},
        "I3D (RGB + flow)": {("hmdb51", "ucf101"): 57.9, ("ucf101", "hmdb51"): 41.5},
        "TSN (RGB + flow)": {("hmdb51", "ucf101"): 60.9, ("ucf101", "hmdb51"): 40.3},
        "TSM (RGB + flow)": {("hmdb51", "ucf101"): 61.2, ("ucf101", "hmdb51"): 41.5},
    },
}

# The comparison (the compare stage's systems table): one row per system and dataset, the columns
# what the system reads (rgb, flow, rgb_flow: registry.Variant.modality), and where each row comes
# from. Systems are the registry's `Variant.system` names; "pretrained" is the paper's initialisation.
# Rows the papers lack are absent, never zero; a system the papers test only after Kinetics
# pretraining (TSM on UCF101/HMDB51) is listed with that pretraining, so it is not read as ImageNet.
COMPARE = {
    "source": "Yao et al. 2020 Tables 2-4; Wang et al. 2018 Table 1 (flow, UCF101); Zhu et al. Table 4; "
              "Zhao et al. 2018 Tables 7-8",
    "rows": [
        {"system": "Rev2Net", "dataset": "ucf101", "pretrained": "ImageNet", "rgb": 94.6, "rgb_flow": 97.1,
         "source": "Yao et al. 2020, Table 2"},
        {"system": "Rev2Net", "dataset": "hmdb51", "pretrained": "ImageNet", "rgb": 71.1, "rgb_flow": 78.0,
         "source": "Yao et al. 2020, Table 2"},
        {"system": "Rev2Net", "dataset": "kinetics400", "pretrained": "ImageNet", "rgb": 73.3, "rgb_flow": 74.8,
         "source": "Yao et al. 2020, Table 4"},
        {"system": "I3D", "dataset": "ucf101", "pretrained": "ImageNet", "rgb": 84.5, "flow": 90.6, "rgb_flow": 93.4,
         "source": "Yao et al. 2020, Table 2 (flow: Wang et al. 2018, Table 1)"},
        {"system": "I3D", "dataset": "hmdb51", "pretrained": "ImageNet", "rgb": 49.8, "rgb_flow": 66.4,
         "source": "Yao et al. 2020, Table 2"},
        {"system": "I3D", "dataset": "kinetics400", "pretrained": "ImageNet", "rgb": 71.1, "rgb_flow": 74.2,
         "source": "Yao et al. 2020, Table 4"},
        {"system": "TSN", "dataset": "ucf101", "pretrained": "ImageNet", "rgb": 86.4, "flow": 86.85, "rgb_flow": 94.0,
         "source": "Yao et al. 2020, Table 2 (flow: Wang et al. 2018, Table 1, from TSN)"},
        {"system": "TSN", "dataset": "hmdb51", "pretrained": "ImageNet", "rgb": 53.7, "rgb_flow": 69.4,
         "source": "Yao et al. 2020, Table 2"},
        {"system": "TSM", "dataset": "ucf101", "pretrained": "Kinetics", "rgb": 94.5,
         "source": "Yao et al. 2020, Table 3"},
        {"system": "TSM", "dataset": "hmdb51", "pretrained": "Kinetics", "rgb": 70.7,
         "source": "Yao et al. 2020, Table 3"},
        {"system": "TSM", "dataset": "kinetics400", "pretrained": "ImageNet", "rgb": 72.5,
         "source": "Yao et al. 2020, Table 4"},
        {"system": "DCD", "dataset": "ucf101", "pretrained": "ImageNet", "rgb": 91.8,
         "source": "Zhao et al. 2018, Table 7 (mean of the three splits)"},
        {"system": "DCD", "dataset": "kinetics400", "pretrained": "ImageNet", "rgb": 71.5,
         "source": "Zhao et al. 2018, Table 8 (top-5: 89.9)"},
        # Hidden two-stream reads RGB only; its flow stream runs on MotionNet's flow, inside the model.
        {"system": "Hidden two-stream", "dataset": "ucf101", "pretrained": "not stated", "rgb": 97.1,
         "source": "Zhu et al., Table 4, I3D backbone"},
        {"system": "Hidden two-stream", "dataset": "hmdb51", "pretrained": "not stated", "rgb": 78.7,
         "source": "Zhu et al., Table 4, I3D backbone"},
    ],
}

# Yao et al. 2020, Sec. 4.2: the weights the coarse-to-fine search found.
OPTIMUM = {
    "source": "Yao et al. 2020, Sec. 4.2",
    "weights": {"loss.alpha": 0.01, "loss.beta": 0.1, "loss.lambda_flow": 0.1, "loss.lambda_im": 0.1},
}
