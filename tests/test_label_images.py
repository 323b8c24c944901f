"""`mambamixer predict` on image-classification runs and `Classifier`: labelling image files with the
model of a run, preprocessed as its evaluation; on real images (Fashion-MNIST, digits) written as PNGs."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import FASHION_NAMES, fashion_folder, make_folder, write_png

from mambamixer import Classifier
from mambamixer.cli import main
from mambamixer.data.augment import ImageTransform
from mambamixer.data.image_files import list_image_files, read_image
from mambamixer.data.images import load_image_data

pytest.importorskip("sklearn")  # digits


@pytest.fixture(scope="module")
def clothes_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """(run folder, ImageFolder): a ResNet trained three epochs on three Fashion-MNIST classes (train/, test/)."""
    root = tmp_path_factory.mktemp("label")
    folder = fashion_folder(shared_data, root / "clothes")
    out = root / "run"
    assert main(["classify", "--model", "resnet_test", "--data", str(folder), "--epochs", "3", "--batch-size", "16",
                 "--lr", "3e-3", "--warmup-epochs", "0", "--set", "dims=[8, 16, 24]", "--out", str(out),
                 "--quiet"]) == 0
    return out, folder


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def snapshot(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*"))
            if p.is_file()}


def test_labels_of_the_test_images_are_the_evaluations(clothes_run: tuple[Path, Path],
                                                       capsys: pytest.CaptureFixture) -> None:
    """Top-1 of every test file = the prediction `classify` scored: the same confusion matrix and top-1."""
    run, folder = clothes_run
    capsys.readouterr()
    assert main(["predict", str(run), str(folder / "test"), "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "60 images of" in printed and "top 3 of 3 classes" in printed and f"wrote {run / 'labels.csv'}" in printed
    rows = read_rows(run / "labels.csv")
    assert list(rows[0]) == ["file", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    names = sorted(FASHION_NAMES.values())  # the class order of the run
    expected = [f"{c}/{p.name}" for c in names for p in sorted((folder / "test" / c).iterdir())]
    assert [r["file"] for r in rows] == expected  # relative to the folder, in ImageFolder order
    confusion = np.zeros((3, 3), dtype=int)
    for r in rows:
        confusion[names.index(r["file"].split("/")[0]), names.index(r["class_1"])] += 1
        probs = [float(r[f"prob_{j}"]) for j in (1, 2, 3)]
        assert sum(probs) == pytest.approx(1.0, abs=2e-6) and probs == sorted(probs, reverse=True)
        assert {r["class_1"], r["class_2"], r["class_3"]} == set(names)
    with open(run / "confusion_matrix.csv", newline="") as fh:
        stored = [list(map(int, row[1:])) for row in list(csv.reader(fh))[1:]]
    assert confusion.tolist() == stored
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.trace(confusion) / 60 == metrics["test_top1"] > 0.5  # a model that learnt: chance is 1/3


def test_builtin_dataset_images_saved_as_png(tmp_path: Path) -> None:
    """A digits run labels its own test images, written as 8x8 PNGs, as its model scores the in-memory split."""
    out = tmp_path / "digits"
    assert main(["classify", "--model", "resnet_test", "--data", "digits", "--epochs", "1", "--limit-train", "300",
                 "--limit-eval", "40", "--img-size", "16", "--set", "dims=[8, 16, 24]", "--out", str(out),
                 "--quiet"]) == 0
    from PIL import Image

    test = load_image_data("digits", limit_eval=40).test
    png = tmp_path / "png"
    png.mkdir()
    for i, image in enumerate(test.images):
        Image.fromarray(image[0].numpy()).save(png / f"{i:03d}.png")
    classifier = Classifier.from_run(out)
    table = classifier.predict(png, top_k=1)
    run = classifier.run
    transform = ImageTransform(run["mean"], run["std"], img_size=16)  # digits are stored 8x8, resized by the model
    with torch.no_grad():
        expected = classifier.net(transform(test.images)).argmax(dim=1)
    assert table["class_1"].tolist() == [run["classes"][c] for c in expected.tolist()]


def test_a_file_a_nested_folder_and_the_api(clothes_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, folder = clothes_run
    nested = tmp_path / "photos"
    src = sorted((folder / "test" / "trouser").iterdir())[:3]
    for i, (where, path) in enumerate(zip(("a", "a/b", "."), src, strict=True)):
        (nested / where).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, nested / where / f"{i}.png")
    (nested / "notes.txt").write_text("not an image")  # not an image suffix: not listed
    (nested / ".hidden.png").write_bytes(b"skipped")  # hidden
    assert [name for _, name in list_image_files(nested)] == ["2.png", "a/0.png", "a/b/1.png"]
    out = tmp_path / "labels.csv"
    assert main(["predict", str(run), str(nested), "--out", str(out), "--top-k", "10"]) == 0  # clipped to 3
    rows = read_rows(out)
    assert [r["file"] for r in rows] == ["2.png", "a/0.png", "a/b/1.png"] and "class_3" in rows[0]
    assert main(["predict", str(run), str(src[0]), "--out", str(out)]) == 0
    assert [r["file"] for r in read_rows(out)] == [str(src[0])]  # a single file: named as given

    classifier = Classifier.from_run(run)
    table = classifier.predict(nested, top_k=2)
    assert table["file"].tolist() == ["2.png", "a/0.png", "a/b/1.png"]
    from PIL import Image

    pil = [Image.open(nested / name) for name in table["file"]]
    tensors = torch.stack([read_image(nested / name, 1) for name in table["file"]])  # (3, 1, 28, 28) uint8
    for other in (classifier.predict(pil, top_k=2), classifier.predict(tensors, top_k=2),
                  classifier.predict(list(tensors.float() / 255), top_k=2)):
        assert other[["class_1", "class_2"]].equals(table[["class_1", "class_2"]])
        np.testing.assert_allclose(other["prob_1"], table["prob_1"], rtol=1e-5)
    probs = classifier.probabilities(list(tensors))
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match=r"expected images \(1, height, width\)"):
        classifier.predict(torch.zeros(3, 28, 28, dtype=torch.uint8))


def test_colour_run_reads_grey_files_as_its_training_did(tmp_path: Path) -> None:
    """A tree of colour and grey images trains on RGB (grey repeated): a file decodes to what training saw."""
    root = make_folder(tmp_path / "mixed", size=(10, 10))
    write_png(root / "cat" / "grey.png", (10, 10), mode="L", value=7)
    data = load_image_data(str(root), img_size=8, val_fraction=0.0)
    files = [p for c in ("cat", "dog") for p in sorted((root / c).iterdir())]
    stacked = torch.cat([data.train.images, data.test.images])
    decoded = torch.stack([read_image(p, 3, decode_size=8) for p in files])
    assert data.in_chans == 3 and all(any(torch.equal(d, s) for s in stacked) for d in decoded)
    grey = read_image(root / "cat" / "grey.png", 3, decode_size=8)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert read_image(root / "cat" / "0.png", 1).shape == (1, 10, 10)  # colour to a grey model: luma


def test_unreadable_files_are_named_and_skipped_only_on_request(clothes_run: tuple[Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    run, folder = clothes_run
    photos = tmp_path / "photos"
    shutil.copytree(folder / "test" / "sneaker", photos)
    good = len(list(photos.iterdir()))
    for i in range(5):
        (photos / f"bad{i}.png").write_bytes(b"\x89PNG truncated" if i % 2 else b"plain text")
    out = tmp_path / "labels.csv"
    capsys.readouterr()
    assert main(["predict", str(run), str(photos), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: 5 of {good + 5} files cannot be read as images: bad0.png (")
    assert "; and 2 more" in err
    assert "--skip-bad" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert main(["predict", str(run), str(photos), "--out", str(out), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.err.splitlines()] == [f"skipped bad{i}.png" for i in range(5)]
    assert "5 unreadable files skipped" in captured.out
    assert [r["file"] for r in read_rows(out)] == sorted(p.name for p in photos.iterdir() if "bad" not in p.name)


def test_outputs_never_overwrite_an_image_or_the_checkpoint(clothes_run: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    run, folder = clothes_run
    test = folder / "test"
    before = snapshot(run / "checkpoint", test)
    image = sorted((test / "trouser").iterdir())[0]
    cases = [(["--out", str(image)], "would overwrite an input image or the run's checkpoint"),
             (["--out", str(run / "checkpoint" / "run.json")], "would overwrite"),
             (["--out", str(tmp_path / "labels.png")], "has the suffix of an image file"),
             (["--out", str(tmp_path / "missing" / "labels.csv")], "does not exist"),
             (["--plot", str(tmp_path / "p.png")], "--plot does not apply to a classify run"),
             (["--top-k", "0"], "must be a positive integer")]
    for extra, message in cases:
        assert main(["predict", str(run), str(test), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err, err
    assert main(["predict", str(run)]) == 2
    assert "give the images to label" in capsys.readouterr().err
    assert main(["predict", str(run), str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert snapshot(run / "checkpoint", test) == before
    assert not list(tmp_path.iterdir())
