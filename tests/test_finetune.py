"""`classify --init`: fine-tuning a model trained on digits (10 classes) onto an ImageFolder of three
Fashion-MNIST classes, the classifier convention of every vision family, and bad sources."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from image_helpers import fashion_folder

from mambamixer.cli import main
from mambamixer.io import load_state_dict
from mambamixer.models import create_model
from mambamixer.tasks.classify import evaluate_classify
from mambamixer.tasks.finetune import adapt_input_conv, load_init
from mambamixer.training import load_checkpoint

pytest.importorskip("sklearn")  # digits

HEAD = ("head.fc.weight", "head.fc.bias")
SOURCE_ARGS = ["--model", "resnet_test", "--set", "dims=[8, 16, 24]", "--epochs", "1", "--limit-train", "300",
               "--limit-eval", "100", "--quiet"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet (BatchNorm in every block) trained one epoch on 300 digits."""
    out = tmp_path_factory.mktemp("finetune") / "digits"
    assert main(["classify", "--data", "digits", "--out", str(out), *SOURCE_ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def clothes(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return fashion_folder(shared_data, tmp_path_factory.mktemp("finetune") / "clothes")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(run / "checkpoint" / "model.safetensors")


def _finetune(source: Path, clothes: Path, out: Path, *extra: str) -> dict:
    assert main(["classify", "--init", str(source), "--data", str(clothes), "--epochs", "1", "--batch-size", "32",
                 "--out", str(out), "--quiet", *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_frozen_backbone_trains_only_the_new_head(source: Path, clothes: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    metrics = _finetune(source, clothes, tmp_path / "frozen", "--freeze-backbone")
    printed = capsys.readouterr().out
    assert "head re-created: 10 -> 3 classes (head.fc, freshly initialised)" in printed
    assert "backbone frozen: training 75 of " in printed  # 24 x 3 + 3
    run = metrics["run"]
    assert run["model_name"] == "resnet_test" and run["num_classes"] == 3  # the model came from --init
    init = run["init"]
    weights = source / "checkpoint" / "model.safetensors"
    assert init["from"] == str(source.resolve()) and init["weights"] == str(weights.resolve())
    assert init["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (init["num_classes"], init["data"], init["freeze_backbone"], init["trainable_params"]) == (
        10, "digits", True, 75)
    before, after = _weights(source), _weights(tmp_path / "frozen")
    assert after["head.fc.weight"].shape == (3, 24) and before["head.fc.weight"].shape == (10, 24)
    # every backbone tensor, BatchNorm running statistics included, is the source's
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in after if k not in HEAD)
    assert evaluate_classify(tmp_path / "frozen")["test_top1"] == metrics["test_top1"]  # the new config reloads


def test_unfrozen_finetune_starts_from_the_source_and_trains_it(source: Path, clothes: Path, tmp_path: Path) -> None:
    net, notes = load_init(source).build(num_classes=3, in_chans=1, img_size=28)  # what run_classify starts from
    before, start = _weights(source), net.state_dict()
    assert notes == ["head re-created: 10 -> 3 classes (head.fc, freshly initialised)"]
    assert all(torch.equal(start[k], before[k]) for k in start if k not in HEAD)
    assert start["head.fc.weight"].shape == (3, 24) and torch.all(start["head.fc.bias"] == 0)
    same, notes = load_init(source).build(num_classes=10, in_chans=1, img_size=8)  # the class count of digits
    assert notes == [] and all(torch.equal(v, before[k]) for k, v in same.state_dict().items())  # the head kept
    metrics = _finetune(source, clothes, tmp_path / "all")
    after = _weights(tmp_path / "all")
    changed = [k for k in after if k not in HEAD and not torch.equal(after[k], before[k])]
    assert "stem.conv.weight" in changed  # the backbone trained too
    assert metrics["run"]["init"]["freeze_backbone"] is False
    assert metrics["run"]["init"]["trainable_params"] == metrics["n_params"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "resnet_small"], "--model resnet_small differs from the model of --init"),
        (["--set", "dims=[8, 16, 32]"], "tensor 'stages.2.blocks.0.conv1.weight' is (24, 16, 3, 3) there, "
                                        "(32, 16, 3, 3) in the model"),
    ],
)
def test_a_source_that_does_not_fit_gets_one_line(source: Path, clothes: Path, tmp_path: Path, extra: list[str],
                                                  message: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["classify", "--init", str(source), "--data", str(clothes), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_bad_init_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blob = tmp_path / "weights.pt"
    blob.write_bytes(b"not a checkpoint")
    cases = [(["--model", "resnet_test", "--freeze-backbone"], "--freeze-backbone needs --init"),
             (["--init", str(tmp_path / "nothing")], "no such file or folder"),
             (["--init", str(blob)], "is a .pt file; expected a folder"),
             ([], "no model: give one (--model NAME)")]
    for args, message in cases:
        assert main(["classify", "--data", "digits", "--out", str(tmp_path / "run"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err, err
    assert not (tmp_path / "run").exists()


def test_saved_model_folder_and_its_safetensors_file(tmp_path: Path) -> None:
    vit = create_model("vit_test", num_classes=10, in_chans=1, img_size=16)
    vit.save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="without a run.json naming its model: give --model"):
        load_init(tmp_path / "vit")
    with pytest.raises(ValueError, match="holds a ViT whose config does not fit model 'resnet_test'"):
        load_init(tmp_path / "vit", "resnet_test").build(10, 1, 16)
    for given in (tmp_path / "vit", tmp_path / "vit" / "model.safetensors"):
        net, notes = load_init(given, "vit_test").build(4, 1, 16)
        assert notes == ["head re-created: 10 -> 4 classes (head.fc, freshly initialised)"]
        assert net.config.num_classes == 4 and net(torch.randn(2, 1, 16, 16)).shape == (2, 4)
    # the position embedding fixes the image size: another size is a backbone mismatch
    with pytest.raises(ValueError, match=r"tensor 'pos_embed' is \(1, 16, 32\) there, \(1, 64, 32\) in the model"):
        load_init(tmp_path / "vit", "vit_test").build(4, 1, 32)


def test_input_convolution_adapts_to_the_channel_count(tmp_path: Path) -> None:
    """A grey model on RGB data (and back): timm's rule keeps what a grey image repeated to RGB scores."""
    torch.manual_seed(0)
    grey = create_model("vim2_femto", num_classes=10, in_chans=1).eval()
    grey.save_pretrained(tmp_path / "grey")
    rgb, notes = load_init(tmp_path / "grey", "vim2_femto").build(10, 3, 28)
    assert notes == ["input convolution adapted: 1 -> 3 channels (stem.proj.weight)"]
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rgb.eval()(x.expand(-1, 3, -1, -1)), grey(x), rtol=1e-4, atol=1e-5)
    w = torch.randn(5, 3, 2, 2)
    image = torch.rand(1, 1, 6, 6)
    conv = torch.nn.functional.conv2d
    torch.testing.assert_close(conv(image, adapt_input_conv(w, 1)), conv(image.expand(-1, 3, -1, -1), w))
    assert adapt_input_conv(w, 4).shape == (5, 4, 2, 2)
    torch.testing.assert_close(adapt_input_conv(w, 6).sum(1), w.sum(1))  # tiled twice, scaled by 1/2


@pytest.mark.parametrize("name", ["vim2_femto", "viqs_femto", "mambaout_femto", "simba_nano", "resnet_test",
                                  "vit_test"])
def test_reset_classifier_in_every_family(name: str, tmp_path: Path) -> None:
    kwargs = {"img_size": 32} if name.startswith(("resnet", "vit")) else {}
    model = create_model(name, num_classes=10, in_chans=3, **kwargs)
    old = model.get_classifier()
    model.reset_classifier(3)
    fc = model.get_classifier()
    assert fc is not old and fc.out_features == 3 and model.config.num_classes == 3
    assert torch.all(fc.bias == 0) and 0.01 < fc.weight.std().item() < 0.03  # truncated normal, std 0.02
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    model.save_pretrained(tmp_path / name)  # the config says 3 classes: it rebuilds and reloads
    again = type(model).from_pretrained(tmp_path / name).eval()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (1, 3) and torch.equal(logits, again(x))
        model.reset_classifier(0)
        assert model(x).shape == (1, fc.in_features)  # the pooled features


def test_checkpoint_of_a_finetuned_run_reloads(source: Path) -> None:
    net, run = load_checkpoint(source / "checkpoint")
    assert run["init"] is None and net.config.num_classes == 10  # a run without --init records none


def test_interrupted_frozen_finetune_resumes_exactly(source: Path, clothes: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--resume of a --freeze-backbone run (mid-epoch) ends with the weights of an uninterrupted one."""
    args = ["classify", "--init", str(source), "--data", str(clothes), "--epochs", "2", "--batch-size", "32",
            "--freeze-backbone", "--quiet"]  # 108 training images: 3 steps an epoch
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    monkeypatch.setenv("MAMBAMIXER_STOP_AFTER_STEPS", "4")
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.delenv("MAMBAMIXER_STOP_AFTER_STEPS")
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    whole, cut = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    before = _weights(source)
    assert all(torch.equal(cut[k], before[k]) for k in cut if k not in HEAD)  # still frozen after the resume
