"""rev2net/data/datasets.py and config.py: the batch contract, clip windows, deterministic and
resumable augmentation, flow through the same geometry, bad input, evaluation protocols."""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch

from rev2net.batch import to_device
from rev2net.data.config import DataConfig
from rev2net.data.datasets import (ClipDataset, ClipSpec, EpochSampler, FlowMissingError, UnreadableVideoWarning,
                                   build_eval_loader, build_loaders)
from rev2net.data.flow import META, flow_dir_of, pair_files, quantize
from rev2net.data.layouts import LayoutError, load_split
from rev2net.data.synthetic import ground_truth_flow
from rev2net.data.transforms import reversed_clip
from rev2net.data.video import open_video


def _cfg(root: str, synthetic_params, **overrides) -> DataConfig:
    base = dict(name="synthetic", root=root, frames=8, crop_size=32, short_side=40, flow_downsample=2,
                batch_size=2, num_workers=0, eval_clips=2, synthetic=synthetic_params)
    return DataConfig(**{**base, **overrides})


def _video(record) -> np.ndarray:
    reader = open_video(record.path)
    return reader.get_batch(list(range(len(reader)))).asnumpy()  # (F, H, W, 3)


# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (dict(name="ucf"), "data.name='ucf' is not allowed: expected ucf101 | hmdb51"),
    (dict(split=4), "data.split=4 is not allowed: expected 1..3"),
    (dict(name="kinetics400", split=2), "data.split=2 is not allowed: expected 1..1 for kinetics400"),
    (dict(frames=1), "data.frames=1"),
    (dict(crop_size=224, short_side=200), "data.short_side=200 is not allowed: expected an integer >= data.crop_size"),
    (dict(flow_downsample=3), "data.flow_downsample=3 is not allowed: expected a positive divisor of data.crop_size"),
    (dict(short_video_policy="repeat"), "data.short_video_policy='repeat' is not allowed: expected loop | pad"),
    (dict(eval_name="hmdb51", eval_root="/x"), "data.class_map=None is not allowed"),
    (dict(val_fraction=1.0), "data.val_fraction=1.0"),
    (dict(augment_on="gpu"), "data.augment_on='gpu' is not allowed: expected cpu | device"),
    (dict(root=""), "data.root='' is not allowed"),
])
def test_config_mistakes_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("|", r"\|")):
        DataConfig(**overrides)


def test_config_defaults_are_the_paper_and_flow_root_is_beside_the_data():
    cfg = DataConfig(name="ucf101", root="/data/ucf")
    assert (cfg.frames, cfg.crop_size, cfg.short_side, cfg.flow_size) == (32, 224, 256, 224)
    assert cfg.resolved_flow_root() == "/data/ucf/flow_tvl1"
    assert DataConfig(synthetic={"classes": 4}).synthetic.classes == 4, "plain dicts become SyntheticConfig"
    assert dataclasses.replace(cfg, flow_downsample=4).flow_size == 56


# --- the batch contract --------------------------------------------------------------------------

def test_batches_follow_the_contract(synthetic_root, synthetic_params):
    data = build_loaders(_cfg(synthetic_root, synthetic_params), seed=0)
    assert (data.num_classes, data.class_names) == (3, ["MoveSideways", "MoveUp", "MoveDown"])
    batch = next(iter(data.train))
    assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape == (2, 3, 8, 32, 32)
    assert batch["flow"].dtype == torch.float16 and batch["flow"].shape == (2, 2, 7, 16, 16)
    for key in ("label", "index", "skipped"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (2,), key
    assert batch["skipped"].tolist() == [0, 0] and torch.isfinite(batch["flow"]).all()
    assert len(data.train) == 3, "6 training videos in batches of 2"
    device_batch = to_device(batch, "cpu")
    assert device_batch["frames"].min() >= -1 and device_batch["frames"].max() <= 1, "[-1, 1] on the device"
    val = next(iter(data.val))
    assert val["frames"].shape == (2, 2, 3, 8, 32, 32) and "flow" not in val, "(B, K, 3, T, H, W), no flow"
    assert len(data.val.dataset) == 3


def test_clip_is_a_consecutive_window_and_the_target_its_reverse(synthetic_root):
    records = load_split("synthetic", synthetic_root, 1).train
    dataset = ClipDataset(records, ClipSpec(frames=8, crop_size=64, short_side=64))  # full frame, no resize
    found = set()
    for seed in range(12):
        sample = dataset[(0, seed)]
        clip = sample["frames"].numpy().transpose(1, 2, 3, 0)  # (T, H, W, 3)
        video = _video(records[0])
        matches = [(s, flip) for s in range(len(video) - 7) for flip in (False, True)
                   if np.array_equal(clip, video[s:s + 8, :, ::-1] if flip else video[s:s + 8])]
        assert len(matches) == 1, f"seed {seed}: not one consecutive window"
        found.add(matches[0])
        start, flip = matches[0]
        reverse = reversed_clip(sample["frames"]).numpy().transpose(1, 2, 3, 0)
        expected = video[start:start + 8][::-1]
        assert np.array_equal(reverse, expected[:, :, ::-1] if flip else expected)
    assert len({s for s, _ in found}) > 1 and len({f for _, f in found}) == 2, "offsets and flips vary"


def test_frame_stride_skips_frames(synthetic_root):
    records = load_split("synthetic", synthetic_root, 1).train
    dataset = ClipDataset(records, ClipSpec(frames=4, stride=3, crop_size=64, short_side=64))
    clip = dataset[(1, 0)]["frames"].numpy().transpose(1, 2, 3, 0)
    video = _video(records[1])
    assert any(np.array_equal(clip, v[s:s + 10:3]) for s in range(3) for v in (video, video[:, :, ::-1]))


@pytest.mark.parametrize("crop_size,short_side", [(32, 40), (32, 80)])  # shrunk 51 -> 32 | enlarged 26 -> 32
def test_device_augmentation_gives_the_loaders_clips(synthetic_root, synthetic_params, crop_size, short_side):
    """data.augment_on=device: the loader ships uncut uint8 regions; on the device they become the
    clips the loader makes with augment_on=cpu from the same seeds (to one grey level), with the
    same labels and flow targets."""
    cfg = _cfg(synthetic_root, synthetic_params, crop_size=crop_size, short_side=short_side, batch_size=3)
    cpu = _epoch(build_loaders(cfg, seed=5).train, 1)
    device = _epoch(build_loaders(dataclasses.replace(cfg, augment_on="device"), seed=5).train, 1)
    assert len(cpu) == len(device) == 2
    for a, b in zip(cpu, device):
        assert "frames" not in b and b["region"].dtype == torch.uint8 and b["region"].shape[-1] == 3
        assert b["geometry"][:, 2].tolist() == [crop_size] * 3
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["flow"], b["flow"])
        x, y = to_device(a, "cpu")["frames"], to_device(b, "cpu")["frames"]
        assert x.shape == y.shape == (3, 3, 8, crop_size, crop_size)
        assert torch.allclose(x, y, atol=1.01 / 127.5, rtol=0), f"{(x - y).abs().max() * 127.5} grey levels apart"
    flips = torch.cat([b["geometry"][:, 1] for b in device])
    assert 0 < flips.sum() < len(flips), "some clips flipped, some not: the flip is exercised"


# --- determinism ---------------------------------------------------------------------------------

def _epoch(loader, epoch: int) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_seed_and_epoch_fix_the_batches_with_any_workers_and_after_resume(synthetic_root, synthetic_params):
    cfg = _cfg(synthetic_root, synthetic_params)
    main = build_loaders(cfg, seed=3).train
    epochs = [_epoch(main, e) for e in range(2)]
    assert not _same(epochs[0], epochs[1]), "each epoch reshuffles and re-augments"
    with_workers = build_loaders(dataclasses.replace(cfg, num_workers=2), seed=3).train
    assert with_workers.persistent_workers
    assert _same(_epoch(with_workers, 0), epochs[0]) and _same(_epoch(with_workers, 1), epochs[1])
    resumed = build_loaders(cfg, seed=3).train  # a restarted trial continues at epoch 1
    assert _same(_epoch(resumed, 1), epochs[1])
    assert not _same(_epoch(build_loaders(cfg, seed=4).train, 0), epochs[0]), "the seed matters"


def test_sampler_yields_indices_with_seeds():
    sampler = EpochSampler(5, seed=0)
    pairs = list(sampler)
    assert sorted(i for i, _ in pairs) == list(range(5)) and len({s for _, s in pairs}) == 5
    sampler.set_epoch(1)
    assert list(sampler) != pairs


# --- flow through the same window and geometry ---------------------------------------------------

def test_flow_targets_align_with_frames_through_crop_resize_and_flip(synthetic_copy, synthetic_params):
    """With exact flow stored as JPEGs, warping frame t+1 by the target flow must reproduce frame t on
    the moving objects much better than no flow or the flow with its x component's sign wrong."""
    flow_root = os.path.join(synthetic_copy, "flow_gt_jpeg")
    records = load_split("synthetic", synthetic_copy, 1).train
    for record in records:
        gt, _ = ground_truth_flow(synthetic_copy, record.key)
        out = flow_dir_of(flow_root, record.key)
        os.makedirs(out)
        for pair, field in enumerate(quantize(gt)):
            for image, path in zip(field, pair_files(out, pair)):
                cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    dataset = ClipDataset(records, ClipSpec(frames=6, crop_size=48, short_side=56), flow_root=flow_root, flow_size=48)
    errors = {"flow": [], "zero": [], "x_negated": []}
    for seed in range(8):
        sample = dataset[(seed % len(records), seed)]
        frames = sample["frames"].numpy().mean(0).astype(np.float32)  # (T, H, W) grey
        flow = sample["flow"].numpy().astype(np.float32)  # (2, T-1, H, W)
        ys, xs = np.mgrid[:48, :48].astype(np.float32)
        for t in range(5):
            moving = np.hypot(flow[0, t], flow[1, t]) > 0.75  # the objects; the background barely pans
            moving[:4], moving[-4:], moving[:, :4], moving[:, -4:] = False, False, False, False
            for name, (u, v) in (("flow", flow[:, t]), ("zero", 0 * flow[:, t]), ("x_negated", (-flow[0, t], flow[1, t]))):
                warped = cv2.remap(frames[t + 1], xs + u, ys + v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                errors[name].append(np.abs(warped - frames[t])[moving].mean())
    flow_error, zero_error, wrong_error = (np.mean(errors[k]) for k in ("flow", "zero", "x_negated"))
    assert flow_error < 0.5 * zero_error and flow_error < 0.5 * wrong_error, (flow_error, zero_error, wrong_error)


def test_short_videos_loop_or_pad_and_flow_is_zero_across_the_seam(synthetic_root):
    records = load_split("synthetic", synthetic_root, 1).train[:1]
    video = _video(records[0])
    flow_root = os.path.join(synthetic_root, "flow_tvl1")
    for policy, expected, zero_pairs in (("loop", [*range(12), 0, 1, 2, 3], [11]),
                                         ("pad", [*range(12), 11, 11, 11, 11], [11, 12, 13, 14])):
        spec = ClipSpec(frames=16, crop_size=64, short_side=64, policy=policy)
        sample = ClipDataset(records, spec, flow_root=flow_root, flow_size=64)[(0, 0)]
        clip = sample["frames"].numpy().transpose(1, 2, 3, 0)
        assert any(np.array_equal(clip, v[expected]) for v in (video, video[:, :, ::-1])), policy
        magnitude = sample["flow"].float().abs().flatten(2).amax(2)[0]  # (T-1,)
        assert [t for t in range(15) if magnitude[t] == 0] == zero_pairs, policy


# --- bad input -----------------------------------------------------------------------------------

def test_unreadable_videos_are_skipped_replaced_counted_and_reported_once(synthetic_copy, synthetic_params):
    records = load_split("synthetic", synthetic_copy, 1).train
    bad = {0: b"", 2: b"this is not a video\n" * 50, 4: open(records[4].path, "rb").read()[:300]}  # empty, text, truncated
    for index, content in bad.items():
        with open(records[index].path, "wb") as f:
            f.write(content)
    cfg = _cfg(synthetic_copy, synthetic_params, batch_size=6)
    loader = build_loaders(cfg, seed=0).train
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = _epoch(loader, 0) + _epoch(loader, 1)
    reports = [w for w in caught if issubclass(w.category, UnreadableVideoWarning)]
    assert sorted(str(w.message).split(":")[0] for w in reports) == sorted(
        f"skipping unreadable video {records[i].path}" for i in bad), "one warning per file"
    for batch in batches:
        assert sum(batch["skipped"].tolist()) >= 3, "every bad video met is counted"
        assert not set(batch["index"].tolist()) & set(bad), "replaced by readable videos"
        assert batch["frames"].shape == (6, 3, 8, 32, 32)
    assert _same(_epoch(loader, 1), batches[1:]), "replacements are deterministic"


def test_a_truncated_but_openable_video_is_served(synthetic_copy, synthetic_params):
    records = load_split("synthetic", synthetic_copy, 1).train
    data = open(records[0].path, "rb").read()
    with open(records[0].path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    dataset = ClipDataset(records, ClipSpec(frames=8, crop_size=32, short_side=40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableVideoWarning)
        sample = dataset[(0, 0)]
    assert sample["frames"].shape == (3, 8, 32, 32) and sample["skipped"] in (0, 1)


def test_missing_flow_is_an_error_at_construction_with_the_command(synthetic_copy, synthetic_params):
    records = load_split("synthetic", synthetic_copy, 1).train
    for record in records[:2]:
        shutil.rmtree(os.path.join(synthetic_copy, "flow_tvl1", record.key))
    with pytest.raises(FlowMissingError, match=r"2 of 6 listed videos have no flow") as error:
        build_loaders(_cfg(synthetic_copy, synthetic_params), seed=0)
    assert f"python -m rev2net.data.flow --dataset synthetic --root {synthetic_copy} --algorithm tvl1" in str(error.value)
    build_loaders(_cfg(synthetic_copy, synthetic_params, flow=False), seed=0)  # no flow needed, no error


def test_unreadable_flow_images_skip_the_sample(synthetic_copy):
    records = load_split("synthetic", synthetic_copy, 1).train
    flow_dir = os.path.join(synthetic_copy, "flow_tvl1", records[0].key)
    for name in os.listdir(flow_dir):
        if name != META:
            with open(os.path.join(flow_dir, name), "wb") as f:
                f.write(b"x")
    dataset = ClipDataset(records, ClipSpec(frames=8, crop_size=32, short_side=40),
                          flow_root=os.path.join(synthetic_copy, "flow_tvl1"), flow_size=16)
    with pytest.warns(UnreadableVideoWarning, match="flow pair"):
        sample = dataset[(0, 0)]
    assert sample["skipped"] == 1 and sample["index"] != 0


def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(LayoutError, match=f"{tmp_path / 'ucf'} does not exist.*trainlist0N.txt"):
        build_loaders(DataConfig(name="ucf101", root=str(tmp_path / "ucf")), seed=0)


# --- evaluation protocols ------------------------------------------------------------------------

def test_shuffle_protocols_reorder_evaluation_clips(synthetic_root, synthetic_params):
    cfg = _cfg(synthetic_root, synthetic_params, frames=12, eval_clips=1, batch_size=3)
    clips = {p: next(iter(build_eval_loader(cfg, protocol=p, seed=5)))["frames"][:, 0]
             for p in ("none", "long_term", "short_term", "complete")}  # (B, 3, T, H, W)
    for b in range(3):
        original = [clips["none"][b, :, t] for t in range(12)]

        def source(frame):  # which original frame this is
            return next(t for t, o in enumerate(original) if torch.equal(frame, o))

        order = {p: [source(clips[p][b, :, t]) for t in range(12)] for p in clips}
        assert order["none"] == list(range(12))
        assert order["long_term"] == [8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6, 7], "blocks of 8 swapped, insides kept"
        assert sorted(order["short_term"][:8]) == list(range(8)) and sorted(order["short_term"][8:]) == [8, 9, 10, 11]
        assert order["short_term"] != order["none"] and sorted(order["complete"]) == list(range(12))
    again = next(iter(build_eval_loader(cfg, protocol="complete", seed=5)))["frames"][:, 0]
    assert torch.equal(again, clips["complete"]), "deterministic by seed"


def test_cross_dataset_evaluation_relabels_both_sides(synthetic_root, synthetic_params, tmp_path):
    target = tmp_path / "target"
    split = load_split("synthetic", synthetic_root, 1)
    for cls, record in (("jump", split.test[0]), ("jump", split.test[1]), ("run", split.test[2])):
        os.makedirs(target / cls, exist_ok=True)
        shutil.copy(record.path, target / cls / os.path.basename(record.path))
    (target / "trainlist01.txt").write_text("")
    (target / "testlist01.txt").write_text("".join(f"{c}/{os.path.basename(r.path)}\n" for c, r in
                                                   (("jump", split.test[0]), ("jump", split.test[1]), ("run", split.test[2]))))
    mapping = tmp_path / "map.txt"
    mapping.write_text("shared,synthetic,generic\nsideways,MoveSideways,run\nvertical,MoveUp+MoveDown,jump\n")
    cfg = _cfg(synthetic_root, synthetic_params, class_map=str(mapping), eval_name="generic", eval_root=str(target),
               batch_size=4)
    data = build_loaders(cfg, seed=0)
    assert (data.num_classes, data.class_names) == (2, ["sideways", "vertical"])
    for record in data.train.dataset.records:
        assert record.label == (0 if record.key.startswith("MoveSideways/") else 1), record.key
    labels = next(iter(build_eval_loader(cfg, cross_dataset=True)))["label"].tolist()
    assert labels == [1, 1, 0], "generic jump -> vertical, run -> sideways"


def test_validation_is_the_layouts_own_list_or_held_out_groups(synthetic_copy, synthetic_params):
    cfg = _cfg(synthetic_copy, synthetic_params)
    data = build_loaders(cfg, seed=0)
    split = load_split("synthetic", synthetic_copy, 1)
    assert [r.key for r in data.val.dataset.records] == [r.key for r in split.val], "the generated validation list"
    assert not {r.group for r in data.val.dataset.records} & {r.group for r in split.test}, "never the test list"
    for n in (1, 2, 3):
        os.remove(os.path.join(synthetic_copy, f"vallist0{n}.txt"))
    a, b = build_loaders(cfg, seed=0), build_loaders(cfg, seed=1)
    held = {r.group for r in a.val.dataset.records}
    assert held == {r.group for r in b.val.dataset.records}, "the same held-out groups for every trial"
    assert not held & {r.group for r in a.train.dataset.records}, "groups never straddle train and validation"
    assert sorted(r.label for r in a.val.dataset.records) == [0, 1, 2], "one group of each class (stratified)"
    other = {r.group for r in build_loaders(dataclasses.replace(cfg, val_seed=7), seed=0).val.dataset.records}
    assert len(other) == 3, "data.val_seed picks the groups"
    with pytest.raises(ValueError, match="data.val_fraction=0"):
        build_loaders(dataclasses.replace(cfg, val_fraction=0.0), seed=0)


# --- what each model family reads ----------------------------------------------------------------

def test_segment_sampling_takes_one_frame_per_segment(synthetic_root):
    records = load_split("synthetic", synthetic_root, 1).train[:1]
    video = _video(records[0])  # 12 frames
    spec = ClipSpec(frames=8, crop_size=64, short_side=64, segments=3)
    anchors = [spec.anchor_indices(12, np.random.default_rng(s)) for s in range(20)]
    for a in anchors:
        assert [0 <= a[0] <= 3, 4 <= a[1] <= 7, 8 <= a[2] <= 11] == [True] * 3, a
    assert len({tuple(a) for a in anchors}) > 1, "a random place in each segment"
    assert spec.anchor_indices(12).tolist() == [2, 6, 10], "evaluation: the segments' centres"
    sample = ClipDataset(records, spec)[(0, 0)]
    assert sample["frames"].shape == (3, 3, 64, 64), "(3, K, H, W)"
    clip = sample["frames"].numpy().transpose(1, 2, 3, 0)
    chosen = spec.anchor_indices(12, np.random.default_rng([0, 0, 0]))
    assert any(np.array_equal(clip, v[chosen]) for v in (video, video[:, :, ::-1])), "the anchor frames, cropped"


def test_flow_input_is_the_flow_of_each_anchor_through_the_same_crop(synthetic_root):
    records = load_split("synthetic", synthetic_root, 1).train[:2]
    flow_root = os.path.join(synthetic_root, "flow_tvl1")
    stacks = ClipSpec(frames=8, crop_size=32, short_side=40, segments=2, flow_pairs=3, rgb=False)
    sample = ClipDataset(records, stacks, flow_input_root=flow_root)[(1, 5)]
    assert set(sample) == {"flow_input", "label", "index", "skipped"}, "a flow-only family decodes no RGB for the model"
    assert sample["flow_input"].shape == (2, 6, 32, 32) and sample["flow_input"].dtype == torch.float16
    clip = ClipSpec(frames=8, crop_size=32, short_side=40, flow_pairs=1)
    both = ClipDataset(records, clip, flow_root=flow_root, flow_size=32, flow_input_root=flow_root)[(0, 3)]
    assert both["frames"].shape == (3, 8, 32, 32) and both["flow_input"].shape == (2, 8, 32, 32)
    torch.testing.assert_close(both["flow_input"][:, :7], both["flow"], msg="at stride 1 the input's pair t is the "
                               "target's pair t (same crop, flip, scale)")
    with pytest.raises(ValueError, match="flow_input_root"):
        ClipDataset(records, clip)


def test_the_target_domain_loader_never_yields_labels(synthetic_root, synthetic_params, tmp_path):
    from rev2net.data.datasets import build_target_loader

    cfg = _cfg(synthetic_root, synthetic_params, eval_name="synthetic", eval_root=synthetic_root, batch_size=3)
    loader = build_target_loader(cfg, seed=0)
    batches = list(loader)
    assert batches and all("label" not in b for b in batches), "unlabelled clips: the labels are not even loaded"
    assert not loader.dataset.labelled and len(loader.dataset) == 6, "the target's training list"


def test_validation_clips_are_kept_when_they_fit(synthetic_root, synthetic_params):
    cached = build_loaders(_cfg(synthetic_root, synthetic_params), seed=0).val.dataset
    first = [cached[i]["frames"] for i in range(len(cached))]
    assert cached._cache is not None and all(cached[i]["frames"] is first[i] for i in range(len(cached)))
    uncached = build_loaders(_cfg(synthetic_root, synthetic_params, eval_cache_mb=0), seed=0).val.dataset
    assert uncached._cache is None and torch.equal(uncached[0]["frames"], first[0]), "the same clips either way"


def test_excluded_videos_are_in_no_list_of_a_trial(synthetic_copy, synthetic_params):
    split = load_split("synthetic", synthetic_copy, 1)
    gone = [split.train[0].path, os.path.relpath(split.val[0].path, synthetic_copy), split.test[0].path]
    cfg = _cfg(synthetic_copy, synthetic_params, exclude=gone)
    data = build_loaders(cfg, seed=0)
    test = build_eval_loader(cfg).dataset.records
    train, val = data.train.dataset.records, data.val.dataset.records
    assert (len(train), len(val), len(test)) == (len(split.train) - 1, len(split.val) - 1, len(split.test) - 1)
    assert not {split.train[0], split.val[0], split.test[0]} & set(train + val + test)
    assert data.num_classes == 3, "the classes stay, with their other videos"
    with pytest.raises(ValueError, match=r"data.max_broken_fraction=1.0 is not allowed: expected a number in \[0, 1\)"):
        _cfg(synthetic_copy, synthetic_params, max_broken_fraction=1.0)
