"""The streamed ImageFolder (data/image_stream.py) on a JPEG tree of real images (Fashion-MNIST written at random
sizes): shapes, seeded crops, the evaluation crop against Pillow's two steps, shards without overlap in the
in-memory path's order, mid-epoch resume, the automatic choice, bad files, and `classify` end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import make_folder, write_png
from jpeg_tree import write_jpeg_tree

from mambamixer.cli import main
from mambamixer.data.augment import describe_augment, parse_augment
from mambamixer.data.image_folder import list_image_folder
from mambamixer.data.image_stream import (
    CROP_RATIO,
    FileReader,
    FileSplit,
    StreamSampler,
    as_image_split,
    eval_batches,
    eval_box,
    in_memory_bytes,
    load_images,
    random_resized_box,
    read_image,
    train_loader,
)
from mambamixer.tasks.classify import evaluate_classify
from mambamixer.training.distributed import Context, EpochSampler
from mambamixer.training.trainer import STOP_AFTER_ENV

SIZE = 32


@pytest.fixture(scope="module")
def tree(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jpeg_tree(tmp_path_factory.mktemp("jpeg") / "fashion", shared_data, n_train=240, n_val=80)


@pytest.fixture(scope="module")
def streamed(tree: Path):
    data, mode = load_images(str(tree), "stream", img_size=SIZE, workers=0)
    assert mode == "stream"
    return data


def _epoch(split: FileSplit, epoch: int, seed: int = 0, skip: int = 0, ctx: Context | None = None,
           batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    sampler = StreamSampler(len(split), seed, ctx, batch)
    sampler.set_epoch(epoch, skip)
    return list(train_loader(split, batch, sampler, seed))


def test_batches_are_uint8_images_of_the_size(streamed) -> None:
    images, labels, indices = _epoch(streamed.train, 0)[0]
    assert images.shape == (16, 1, SIZE, SIZE) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and torch.equal(labels, streamed.train.labels[indices])
    assert images.float().std() > 10  # pixels, not zeros
    test_images, test_labels = next(iter(eval_batches(streamed.test, 64)))
    assert test_images.shape == (64, 1, SIZE, SIZE) and test_labels.shape == (64,)
    assert (len(streamed.train), len(streamed.val), len(streamed.test)) == (216, 24, 80)
    assert streamed.in_chans == 1 and streamed.image_size == (SIZE, SIZE)
    assert 0.1 < streamed.mean[0] < 0.6 and 0.1 < streamed.std[0] < 0.6


def test_colour_tree_streams_three_channels(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", n=6, size=(20, 12))
    data, _ = load_images(str(root), "stream", img_size=8, workers=0)
    images, _, _ = _epoch(data.train, 0, batch=2)[0]
    assert images.shape == (2, 3, 8, 8) and data.in_chans == 3


def test_crops_are_seeded_by_seed_epoch_and_image_not_by_workers(streamed) -> None:
    split = streamed.train.subset(torch.arange(48))
    first = _epoch(split, 0)
    again = _epoch(split, 0)
    two_workers = _epoch(FileSplit(split.files, split.labels, FileReader(SIZE, 1, workers=2)), 0)
    for a, b, c in zip(first, again, two_workers, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0]) and torch.equal(a[2], c[2])
    other_epoch = {int(i): im for images, _, idx in _epoch(split, 1) for i, im in zip(idx, images, strict=True)}
    firsts = {int(i): im for images, _, idx in first for i, im in zip(idx, images, strict=True)}
    same = sum(torch.equal(firsts[i], other_epoch[i]) for i in firsts)
    assert same == 0  # every image cropped anew in the next epoch
    other_seed = _epoch(split, 0, seed=1)
    assert not torch.equal(first[0][2], other_seed[0][2])  # another order


def test_random_resized_box_bounds_area_and_ratio() -> None:
    rng = np.random.default_rng(0)
    for width, height in ((160, 40), (41, 150), (100, 100), (3000, 2000)):
        for _ in range(200):
            left, top, right, bottom = random_resized_box(width, height, rng)
            w, h = right - left, bottom - top
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            fits = 0.08 * width * height * 0.9 <= w * h <= width * height
            assert fits, (width, height, w, h)
            fallback = (w, h) in ((width, round(width / CROP_RATIO[0])), (round(height * CROP_RATIO[1]), height),
                                  (width, height))
            assert CROP_RATIO[0] * 0.9 <= w / h <= CROP_RATIO[1] * 1.1 or fallback
    assert random_resized_box(100, 100, rng, scale=(1.0, 1.0)) == (0, 0, 100, 100)  # the whole image
    assert random_resized_box(400, 100, rng, scale=(1.0, 1.0)) == (133, 0, 266, 100)  # clamped to 4/3, centred


@pytest.mark.parametrize(("width", "height"), [(50, 70), (90, 40), (64, 64)])
def test_evaluation_crop_is_resize_shorter_side_then_centre_crop(tmp_path: Path, width: int, height: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(width)
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    got = read_image(path, 24, False, lambda w, h: eval_box(w, h, 24))
    short = round(24 / 0.875)  # 27
    new = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    left, top = round((new[0] - 24) / 2), round((new[1] - 24) / 2)
    with Image.open(path) as img:
        want = np.asarray(img.resize(new, Image.Resampling.BILINEAR).crop((left, top, left + 24, top + 24)))
    assert got.shape == want.shape == (24, 24, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1 and (got == want).mean() > 0.95


def test_jpeg_draft_decoding_matches_a_full_decode(tmp_path: Path) -> None:
    """A 1200x900 photo-like JPEG decoded at 1/8 scale (DCT domain) for a 64 px crop: close to the full decode."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).resize((1200, 900))
    path = tmp_path / "big.jpg"
    noise.filter(ImageFilter.GaussianBlur(4)).save(path, quality=95)
    with Image.open(path) as img:
        img.draft("RGB", (150, 112))
        assert img.size == (150, 113)  # the decoder really scaled by 1/8
    box = eval_box(1200, 900, 64)
    fast = read_image(path, 64, False, lambda w, h: box).astype(float)
    with Image.open(path) as img:
        full = img.convert("RGB")

    def resized(b) -> np.ndarray:
        return np.asarray(full.resize((64, 64), Image.Resampling.BILINEAR, box=b)).astype(float)
    shifted = resized((box[0] + 40, box[1], box[2] + 40, box[3]))  # 40 source pixels = 3 output pixels off
    # the DCT-domain reduction is another low-pass filter: about the bilinear / bicubic difference (4.7 and 4.9
    # grey levels here), far from a misplaced crop's
    reference = resized(box)
    assert np.abs(fast - reference).mean() < 0.2 * reference.std() < np.abs(shifted - reference).mean()


def test_two_ranks_shard_in_the_in_memory_order_without_overlap(streamed) -> None:
    n, batch = len(streamed.train), 16
    ranks = [[int(i) for _, _, idx in _epoch(streamed.train, 2, ctx=Context(rank=r, world_size=2), batch=batch)
              for i in idx] for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1])
    one = EpochSampler(n, 0, Context(), 2 * batch)
    one.set_epoch(2)
    assert sorted(ranks[0] + ranks[1]) == sorted(one.indices())  # the global batches of one process
    for r in range(2):
        memory = EpochSampler(n, 0, Context(rank=r, world_size=2), batch)
        memory.set_epoch(2)
        assert ranks[r] == memory.indices()


def test_streamed_splits_are_the_in_memory_splits(tmp_path: Path) -> None:
    """The same files, order, validation/test split and limits: square PNGs decoded whole by both paths."""
    root = tmp_path / "pets"
    for k, c in enumerate(("cat", "dog", "owl")):
        for i in range(12):
            write_png(root / c / f"{i}.png", (10 + i, 10 + i), value=100 * k + i)
    memory, mode = load_images(str(root), "memory", img_size=8, limit_train=20)
    stream, _ = load_images(str(root), "stream", img_size=8, limit_train=20, workers=0, eval_crop=1.0)
    assert mode == "memory" and memory.split == stream.split.split("; streamed")[0]
    for a, b in ((memory.train, stream.train), (memory.val, stream.val), (memory.test, stream.test)):
        decoded = as_image_split(b, torch.arange(len(b)))
        assert torch.equal(decoded.labels, a.labels) and torch.equal(decoded.images, a.images)


def test_resumed_epoch_gives_the_same_batches(streamed) -> None:
    whole = _epoch(streamed.train, 3)
    resumed = _epoch(streamed.train, 3, skip=5 * 16)
    assert len(resumed) == len(whole) - 5
    for a, b in zip(whole[5:], resumed, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_automatic_choice_follows_the_decoded_size(tree: Path) -> None:
    listing = list_image_folder(tree)
    assert listing.n_files == 320
    assert in_memory_bytes(listing, SIZE) == 320 * 1 * SIZE * SIZE
    assert in_memory_bytes(listing, None) <= 320 * 160 * 160  # the largest sampled image
    limit = 320 * SIZE * SIZE
    assert load_images(str(tree), "auto", img_size=SIZE, memory_limit=limit, workers=0)[1] == "memory"
    assert load_images(str(tree), "auto", img_size=SIZE, memory_limit=limit - 1, workers=0)[1] == "stream"
    with pytest.raises(ValueError, match="needs an image size"):
        load_images(str(tree), "auto", memory_limit=limit - 1)
    with pytest.raises(ValueError, match="built-in dataset"):
        load_images("digits", "stream")
    with pytest.raises(ValueError, match="data mode must be one of"):
        load_images(str(tree), "fast")


def test_a_bad_file_is_named_in_one_line(streamed, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(streamed.train.path(0).read_bytes()[:200])  # a truncated JPEG
    files = [streamed.train.path(i) for i in range(7)] + [bad]
    split = FileSplit(files, streamed.train.labels[:8], FileReader(SIZE, 1, workers=1))
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg") as err:
        list(eval_batches(split, 4))
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    root = make_folder(tmp_path / "pets", n=4, size=(8, 8))
    (root / "cat" / "0.png").write_bytes(b"not an image")
    assert main(["classify", "--model", "vit_test", "--data", str(root), "--img-size", "8", "--data-mode", "stream",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: cannot read image") and "0.png" in message and message.count("\n") == 1


def test_describe_augment_is_a_spec_that_parses_back() -> None:
    for spec in ("crop=3", "crop=4,flip,erase=0.25", "flip=alternate", "none"):
        config = parse_augment(spec, "folder", 28)
        assert describe_augment(config) == spec and parse_augment(describe_augment(config), "folder", 28) == config


def _classify(tree: Path, out: Path, *extra: str, workers: str = "1") -> list[str]:
    return ["classify", "--model", "vit_test", "--data", str(tree), "--img-size", "16", "--data-mode", "stream",
            "--workers", workers, "--epochs", "2", "--batch-size", "32", "--set", "patch_size=4", "--out", str(out),
            *extra]


def _assert_labels_reproduce_the_test_confusion(run: Path, test_folder: Path) -> None:
    """`predict` on a streamed run's test folder preprocesses as its evaluation did (the shorter-side resize and
    centre crop): the top-1 labels give exactly the run's confusion matrix."""
    out = run / "labels.csv"
    assert main(["predict", str(run), str(test_folder), "--top-k", "1", "--out", str(out)]) == 0
    with open(run / "confusion_matrix.csv", newline="") as fh:
        table = list(csv.reader(fh))
    names = table[0][1:]
    confusion = [[0] * len(names) for _ in names]
    with open(out, newline="") as fh:
        for row in csv.DictReader(fh):
            confusion[names.index(row["file"].split("/")[0])][names.index(row["class_1"])] += 1
    assert confusion == [list(map(int, r[1:])) for r in table[1:]]


def test_classify_streams_end_to_end_and_resumes_mid_epoch(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(_classify(tree, tmp_path / "whole")) == 0
    printed = capsys.readouterr().out
    assert "streamed by 1 workers a process" in printed
    assert "augment: random-resized crop (area 0.08-1) at decode, flip,erase=0.25" in printed
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    run = metrics["run"]
    assert (run["data_mode"], run["crop_scale"], run["eval_crop"], run["augment"]["crop_padding"]) == (
        "stream", 0.08, 0.875, 0)
    assert metrics["test_images"] == 80 and metrics["train_images"] == 216 and math.isfinite(metrics["test_loss"])
    assert evaluate_classify(tmp_path / "whole")["test_top1"] == metrics["test_top1"]
    _assert_labels_reproduce_the_test_confusion(tmp_path / "whole", tree / "val")
    monkeypatch.setenv(STOP_AFTER_ENV, "9")  # epoch 2 (6 steps an epoch), step 3
    assert main(_classify(tree, tmp_path / "run", "--quiet")) == 130
    monkeypatch.delenv(STOP_AFTER_ENV)
    # resumed on another number of workers: the crops and the global RNG do not depend on it
    assert main(_classify(tree, tmp_path / "run", "--quiet", "--resume", workers="0")) == 0
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test_top1", "test_loss", "val_top1", "val_loss"):
        assert resumed[key] == metrics[key], key
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in metrics["history"]]


@pytest.mark.slow
def test_peak_rss_at_70000_files_within_10_percent_of_7000(shared_data: Path, tmp_path_factory) -> None:
    """The issue's measurement: 20 batches of 64 at 224 px with 2 workers, each tree size in its own process."""
    from bench_helpers import load_benchmark

    bench = load_benchmark("image_stream")
    root = tmp_path_factory.mktemp("trees")
    args = type("Args", (), {"root": root, "files_list": [7000, 70000], "sizes": (40, 160), "img_size": 224,
                             "workers": [2], "batches": 20, "batch": 64})()
    result = bench.rss(args)
    small, large = result["7000"], result["70000"]
    assert (small["files"], large["files"]) == (7000, 70000)
    assert large["peak_rss_mb"] <= 1.1 * small["peak_rss_mb"], result
    assert large["largest_worker_peak_rss_mb"] <= 1.1 * small["largest_worker_peak_rss_mb"], result


@pytest.mark.slow
def test_streamed_training_matches_the_in_memory_accuracy(shared_data: Path, tmp_path_factory) -> None:
    """vim2_femto through `classify`, 3 epochs on 6,000 of the 70,000-file tree's training images (2,000 test),
    in memory and streamed with the in-memory recipe: test top-1 within 1 point."""
    from bench_helpers import load_benchmark

    bench = load_benchmark("image_stream")
    args = type("Args", (), {"root": tmp_path_factory.mktemp("trees"), "files": 70000, "sizes": (40, 160),
                             "img_size": 28, "model": "vim2_femto", "epochs": 3, "limit_train": 6000,
                             "limit_eval": 2000})()
    result = bench.accuracy(args)
    memory, stream = result["memory"]["test_top1"], result["stream, the in-memory recipe"]["test_top1"]
    assert abs(memory - stream) <= 0.01, result
