"""``mambamixer predict`` on an image-classification run: label image files with their top-k classes.

    result = label_images("runs/classify-vim2_femto-flowers", "new_photos/")   # -> RUN/labels.csv

One CSV row per image file (a file, or every image below a folder, sorted folder by folder):
``file`` (relative to the folder given), then ``class_1, prob_1, ..., class_k, prob_k``. Everything
is checked, and every file read, before anything is written; the CSV is written atomically and never
over an input image or a file of the run's checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mambamixer.classifier import Classifier
from mambamixer.data.image_files import list_image_files
from mambamixer.data.image_folder import IMAGE_EXTENSIONS
from mambamixer.io import atomic_write
from mambamixer.tasks.common import check_positive_int
from mambamixer.tasks.predict import writable_file

DEFAULT_TOP_K = 5


def label_images(run_dir: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike | None = None,
                 top_k: int = DEFAULT_TOP_K, skip_bad: bool = False,
                 device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Label ``images`` (a file or a folder) with the run's model and write ``out`` (default
    ``RUN/labels.csv``). ``top_k`` is clipped to the run's classes; ``skip_bad`` labels the readable
    files when some are not. Returns the table, where it went and the skipped files."""
    check_positive_int("top_k", top_k)
    run_dir = Path(run_dir)
    classifier = Classifier.from_run(run_dir, device)
    files = list_image_files(images)
    out = writable_file(Path(out) if out is not None else run_dir / "labels.csv", "the labels")
    assert classifier.checkpoint is not None
    keep = {p.resolve() for p, _ in files} | {p.resolve() for p in classifier.checkpoint.glob("*")}
    if out.resolve() in keep:
        raise ValueError(f"--out {out} would overwrite an input image or the run's checkpoint; expected a new file "
                         f"name")
    if out.suffix.lower() in IMAGE_EXTENSIONS:
        raise ValueError(f"--out {out} has the suffix of an image file; expected a CSV name (labels.csv)")
    frame = classifier.label_files(files, top_k, skip_bad)
    atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6f"))
    return {"labels": frame, "csv": out, "skipped": frame.attrs["skipped"], "files": len(files),
            "checkpoint": classifier.checkpoint, "top_k": min(top_k, classifier.num_classes),
            "num_classes": classifier.num_classes}


__all__ = ["DEFAULT_TOP_K", "label_images"]
