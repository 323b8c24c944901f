"""The classify task end to end through the command line (short ResNet runs on digits and a tiny
ImageFolder), the evaluate path, bad input, and the vision baselines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import with_flags
from image_helpers import make_folder, write_png

from mambamixer.cli import main
from mambamixer.data.augment import ImageTransform
from mambamixer.data.images import ImageSplit
from mambamixer.models import create_model, list_models, registry
from mambamixer.tasks.classify import (
    build_vision_model,
    classification_loss,
    classification_metrics,
    evaluate_classify,
    run_classify,
)
from mambamixer.training import load_checkpoint, load_train_state

pytest.importorskip("sklearn")  # digits

METRIC_KEYS = {"test_top1", "test_top5", "test_loss", "val_top1", "val_loss", "n_params", "train_images_per_second",
               "inference_images_per_second", "epoch_images_per_second", "seconds", "train_seconds",
               "seconds_per_epoch", "epochs_run", "best_epoch", "peak_memory_mb", "test_images", "train_images"}
OUTPUTS = ("metrics.json", "training_curves.png", "confusion_matrix.png", "confusion_matrix.csv", "predictions.png",
           "checkpoint/model.safetensors", "checkpoint/config.json", "checkpoint/run.json")


def _classify_args(out: Path, *extra: str) -> list[str]:
    return ["classify", "--model", "resnet_test", "--data", "digits", "--epochs", "3", "--lr", "3e-3",
            "--warmup-epochs", "0", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("classify") / "run"
    assert main(_classify_args(out, "--set", "dims=[8, 16, 24]")) == 0
    return out


def test_classify_writes_every_file(run_dir: Path) -> None:
    for name in OUTPUTS:
        assert (run_dir / name).is_file(), name
    for name in ("training_curves.png", "confusion_matrix.png", "predictions.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.rglob("*.tmp"))
    rows = (run_dir / "confusion_matrix.csv").read_text().splitlines()
    assert len(rows) == 11 and sum(int(v) for r in rows[1:] for v in r.split(",")[1:]) == 359


def test_metrics_are_complete_and_training_learns(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    for key in METRIC_KEYS:
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), key
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]  # training lowers the loss
    assert metrics["test_top1"] > 0.25 and metrics["test_top5"] >= metrics["test_top1"]  # chance is 0.1
    assert metrics["test_images"] == 359 and metrics["epochs_run"] == 3
    assert metrics["config"]["dims"] == [8, 16, 24]  # --set reached the model
    run = metrics["run"]
    assert run["task"] == "classify" and run["model_name"] == "resnet_test" and run["img_size"] == 8
    assert run["training"]["lr"] == 3e-3 and run["training"]["label_smoothing"] == 0.1  # flag and recipe
    assert run["augment"]["hflip"] is False  # no flips for digits
    assert all({"val_top1", "val_loss", "lr", "samples"} <= set(h) for h in metrics["history"])


def test_evaluate_reproduces_metrics(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    again = evaluate_classify(run_dir)
    assert again["test_top1"] == metrics["test_top1"] and again["test_top5"] == metrics["test_top5"]
    assert again["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir)]) == 0  # dispatches on the checkpoint's task
    out = capsys.readouterr().out
    assert f"test top-1 {metrics['test_top1']:.4f}" in out and "metrics.json: test top-1" in out
    assert "test-time augmentation" not in out
    with pytest.raises(ValueError, match="a mirrored digits image can change its label"):
        evaluate_classify(run_dir, tta="flip")  # refused before any data is read


def test_image_folder_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_folder(tmp_path / "pets", n=8, size=(8, 8))
    out = tmp_path / "run"
    assert main(["classify", "--model", "vit_test", "--data", str(root), "--epochs", "1", "--out", str(out),
                 "--quiet", "--bf16", "--set", "patch_size=2", "--augment", "flip,crop=1", "--tta", "flip"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    augment = metrics["run"]["augment"]
    assert (augment["hflip"], augment["crop_padding"], augment["erase_prob"]) == (True, 1, 0.0)
    assert metrics["run"]["in_chans"] == 3 and metrics["run"]["classes"] == ["cat", "dog"]
    assert metrics["run"]["training"]["bf16"] is True and math.isfinite(metrics["test_loss"])
    assert metrics["run"]["tta"] == metrics["tta"] == "flip" and math.isfinite(metrics["test_tta_loss"])
    assert metrics["test_tta_loss"] != metrics["test_loss"]  # the mirrored views were scored
    again = evaluate_classify(out)  # the run's TTA is reused
    assert again["test_top1"] == metrics["test_top1"] and again["test_tta_top1"] == metrics["test_tta_top1"]
    assert again["test_tta_loss"] == pytest.approx(metrics["test_tta_loss"], rel=1e-5)
    assert "test_tta_top1" not in evaluate_classify(out, tta="none")
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"with flip test-time augmentation: top-1 {metrics['test_tta_top1']:.4f}" in printed
    assert "metrics.json: flip test-time augmentation top-1" in printed


@pytest.mark.parametrize("schedule", ["alternate", "random"])
def test_alternating_flips_in_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: str) -> None:
    """--augment flip=alternate: the second epoch trains on the mirror of each image as the first epoch showed it
    (random flips keep half of them as they were, so the random schedule must fail the same check)."""
    from mambamixer.tasks import classify

    seen: list[torch.Tensor] = []

    def recording_loss(model, images, labels, label_smoothing=0.0):
        seen.append(images.detach().clone())
        return real_loss(model, images, labels, label_smoothing)

    real_loss = classify.classification_loss
    monkeypatch.setattr(classify, "classification_loss", recording_loss)
    root = tmp_path / "pets"
    for c, name in enumerate(("cat", "dog")):  # every image different (make_folder repeats them across classes)
        for i in range(12):
            write_png(root / name / f"{i}.png", (8, 8), value=100 * c + i)
    spec = "flip=alternate" if schedule == "alternate" else "flip"
    metrics = run_classify("vit_test", str(root), out=tmp_path / "run", epochs=2, batch_size=4, quiet=True,
                           augment=spec, val_fraction=0.0, model_overrides={"patch_size": 2})  # fmt: skip
    assert metrics["run"]["augment"]["flip_schedule"] == schedule
    per_epoch = metrics["train_images"] // 4 * 4
    first, second = torch.cat(seen)[:per_epoch], torch.cat(seen)[per_epoch : 2 * per_epoch]
    # match each image of epoch 2 with its original or its mirror in epoch 1 (the random PNGs are not symmetric)
    mirrored = [any(torch.equal(x, y.flip(-1)) for y in first) for x in second]
    kept = [any(torch.equal(x, y) for y in first) for x in second]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # every image met in both epochs
    assert all(mirrored) == (schedule == "alternate")


def test_flip_tta_averages_the_softmax_of_image_and_mirror() -> None:
    """classification_metrics(tta="flip"): the mean probability over each image and its mirror."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))  # not mirror-invariant
    split = ImageSplit(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (40,)))
    transform = ImageTransform([0.5], [0.25])
    x = transform(split.images)
    with torch.no_grad():
        probs = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
        plain = classification_metrics(model, split, transform, 3, batch_size=16)
        both = classification_metrics(model, split, transform, 3, batch_size=16, tta="flip")
    tta = both["tta"]  # the flipped figures, from the same pass as the plain ones
    assert {k: both[k] for k in ("top1", "top5", "loss")} == {k: plain[k] for k in ("top1", "top5", "loss")}
    assert tta["top1"] == (probs.argmax(1) == split.labels).double().mean().item()
    assert tta["loss"] == pytest.approx(-probs[torch.arange(40), split.labels].log().mean().item(), rel=1e-5)
    assert tta["confusion"].sum() == 40 and not torch.equal(tta["confusion"], plain["confusion"])  # mirror counts
    assert plain["loss"] == pytest.approx(torch.nn.functional.cross_entropy(model(x), split.labels).item(), rel=1e-5)


@pytest.fixture
def three_channel_model(monkeypatch: pytest.MonkeyPatch) -> str:
    registry._ensure_loaded()
    monkeypatch.setitem(registry._ENTRYPOINTS, "rgb_only_test", lambda **kw: create_model(
        "resnet_test", **{**kw, "in_chans": 3}))
    monkeypatch.setitem(registry._TASKS, "rgb_only_test", "vision")
    return "rgb_only_test"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "no_such_model"}, "unknown model"),
        ({"--model": "dlinear"}, "not an image classifier"),
        ({"--data": "imagenet22k"}, "unknown dataset 'imagenet22k'"),
        ({"--set": "num_classes=3"}, "cannot set ['num_classes']"),
        ({"--set": "no_such_field=3"}, "no_such_field"),
        ({"--img-size": "6"}, "not divisible by the total stride 4"),
        ({"--model": "vit_test", "--img-size": "10"}, "multiple of patch_size"),
        ({"--model": "rgb_only_test"}, "cannot take the digits images (1 channels"),
        ({"--epochs": "0"}, "positive integer"),
        ({"--augment": "flip,rotate=10"}, "unknown augmentation 'rotate=10'"),
        ({"--augment": "flip", "--no-augment": None}, "--no-augment contradicts --augment flip"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(change: dict[str, str], message: str, tmp_path: Path,
                                              three_channel_model: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(with_flags(_classify_args(out), change)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_bad_image_folders_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    single = make_folder(tmp_path / "single", classes=("cat",))
    broken = make_folder(tmp_path / "broken")
    (broken / "dog" / "x.png").write_bytes(b"\x89PNG broken")
    for folder, message in ((empty, "no class sub-folders"), (single, "single class"), (broken, "cannot read image"),
                            (tmp_path / "missing" / "", "no ImageFolder")):
        out = tmp_path / f"run-{folder.name}"
        assert main(["classify", "--model", "resnet_test", "--data", str(folder) + "/", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
        assert not out.exists()


def test_evaluate_refuses_a_forecast_checkpoint_for_classify(run_dir: Path, tmp_path: Path) -> None:
    run = json.loads((run_dir / "checkpoint" / "run.json").read_text())
    fake = tmp_path / "checkpoint"
    fake.mkdir()
    for name in ("config.json", "model.safetensors"):
        (fake / name).write_bytes((run_dir / "checkpoint" / name).read_bytes())
    (fake / "run.json").write_text(json.dumps({**run, "task": "forecast"}))
    with pytest.raises(ValueError, match="not an image-classification run"):
        evaluate_classify(fake)


# ------------------------------------------------------------------------------ vision baselines


@pytest.mark.parametrize("name", ["resnet_small", "vit_small"])
def test_baseline_sizes(name: str) -> None:
    model = create_model(name, num_classes=10, in_chans=1, img_size=28)
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n < 3_000_000
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_baselines_registered_and_reload(tmp_path: Path) -> None:
    assert {"resnet_small", "resnet_test", "vit_small", "vit_test"} <= set(list_models(task="vision"))
    model = build_vision_model("resnet_test", 3, 3, 16, {"features_only": True})
    feats = model(torch.randn(1, 3, 16, 16))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 16, 16), (1, 16, 8, 8), (1, 32, 4, 4)]
    vit = build_vision_model("vit_test", 4, 3, 16, {})
    vit.save_pretrained(tmp_path / "vit")
    again = type(vit).from_pretrained(tmp_path / "vit")
    x = torch.randn(2, 3, 16, 16)
    vit.eval()
    again.eval()
    assert torch.equal(vit(x), again(x))
    with pytest.raises(ValueError, match="img_size=16"):
        vit(torch.randn(2, 3, 8, 8))


def test_aux_loss_is_added() -> None:
    model = create_model("resnet_test", num_classes=3, in_chans=1, img_size=8)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    base = classification_loss(model, x, y)
    model.aux_loss = lambda: torch.tensor(0.5)  # as ViM2 with Switch of Scans exposes its balance loss
    assert classification_loss(model, x, y).item() == pytest.approx(base.item() + 0.5, rel=1e-5)


def test_run_classify_api_limits(tmp_path: Path) -> None:
    metrics = run_classify("resnet_test", "digits", epochs=1, limit_train=64, limit_eval=50, out=tmp_path / "run",
                           quiet=True, augment=False, batch_size=32)
    assert metrics["train_images"] == 64 and metrics["run"]["augment"] is None
    assert metrics["history"][0]["samples"] == 64  # two full batches
    assert metrics["test_images"] == 50 and metrics["val_images"] == 50
    assert evaluate_classify(tmp_path / "run")["test_images"] == 50  # the same seeded subset


def test_val_fraction_zero_trains_on_every_training_image(tmp_path: Path) -> None:
    """--val-fraction 0: no validation split; the epoch of lowest training loss is kept and reloads."""
    out = tmp_path / "all"
    assert main([*_classify_args(out, "--set", "dims=[8, 16, 24]", "--limit-eval", "50"), "--val-fraction", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_images"] == 0 and metrics["val_top1"] is None
    assert metrics["train_images"] == 1438  # all of digits but its 359 test images (1295 + 143 with validation)
    assert metrics["run"]["val_fraction"] == 0 and metrics["run"]["training"]["best_epoch_by"].startswith("training")
    losses = [h["train_loss"] for h in metrics["history"]]
    assert metrics["best_epoch"] == 1 + losses.index(min(losses))
    assert evaluate_classify(out)["test_top1"] == metrics["test_top1"]


def test_ema_run_checkpoints_the_average(tmp_path: Path) -> None:
    """--ema-decay: the checkpoint holds the averaged weights the metrics came from."""
    out = tmp_path / "ema"
    assert main([*_classify_args(out, "--set", "dims=[8, 16, 24]", "--limit-train", "256", "--limit-eval", "100"),
                 "--ema-decay", "0.9"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["training"]["ema_decay"] == 0.9
    again = evaluate_classify(out)
    assert (again["test_top1"], again["test_loss"]) == (metrics["test_top1"], pytest.approx(metrics["test_loss"]))
    state = load_train_state(out / "train_state.pt")
    assert state["ema"]["updates"] == state["step"]
    best = load_checkpoint(out / "checkpoint")[0].state_dict()
    assert all(torch.equal(best[k], v) for k, v in state["best_weights"].items())
