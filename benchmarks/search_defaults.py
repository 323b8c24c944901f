"""Choose a forecaster's defaults on the validation sets of several data sets together.

    python benchmarks/search_defaults.py --model tsm2 --datasets ETTh1 ETTm1 Weather --horizons 96 \\
        --set loss=mse,mae --set lr=2e-4,5e-4 --jobs 2
    python benchmarks/search_defaults.py --config "loss=mae d_model=64" --config "loss=mae epochs=16"
    python benchmarks/search_defaults.py --table         # the table, from the results file only

Every (configuration, data set, horizon, seed) runs ``mambamixer forecast`` at ``--seq-len`` (default
96) in its own process with ``benchmarks/reproduce_tsm2.py``'s runner, and appends one row (command,
configuration, seed, validation and test MSE/MAE, epochs, seconds, versions) to ``--results``
(default the committed ``benchmarks/results/defaults96.jsonl``); finished runs are skipped.

A default is meant for every data set, so it is chosen on all of them: each configuration's score
is the mean, over the (data set, horizon) cells it has run, of its validation MSE divided by the
validation MSE of the reference configuration (``defaults``, the registered recipe) in that cell.
Only configurations measured in every cell the reference has are ranked. ``defaults`` is the
recipe registered at the row's ``git_commit`` (its ``config.training`` holds it in full): rows made
before a default changes keep their key, so after such a change name the old recipe explicitly
(e.g. ``--config "loss=mse"``) rather than mixing ``defaults`` rows of two recipes. Test figures are printed
beside the score and take no part in the choice.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_tsm2 import ROOT, _mean, finished, load_rows, run_all  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "defaults96.jsonl"
REFERENCE = "defaults"


def parse_config(text: str) -> dict[str, str]:
    """``"loss=mae d_model=64"`` -> ``{"loss": "mae", "d_model": "64"}``."""
    config = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value or "," in value:
            raise SystemExit(f"--config expects space-separated KEY=VALUE items, got {item!r} in {text!r}")
        if key == "seed":
            raise SystemExit("seeds are given with --seeds, not --config")
        config[key] = value
    if not config:
        raise SystemExit("--config expects at least one KEY=VALUE")
    return config


def scores(rows: list[dict], model: str, seq_len: int) -> tuple[list[tuple], list[dict]]:
    """``(cells, ranked)``: the (data, horizon) cells of the reference configuration, and per
    configuration measured in all of them ``{"config", "score", "val", "test_mse", "test_mae", "seeds"}``
    (means over seeds per cell; ``score`` the mean validation ratio to the reference), best first."""
    by_config: dict[str, dict[tuple, list[dict]]] = {}
    for r in finished(rows).values():
        if r["model"] == model and r["seq_len"] == seq_len:
            by_config.setdefault(r["config_name"], {}).setdefault((r["data"], r["horizon"]), []).append(r)
    reference = by_config.get(REFERENCE, {})
    cells = sorted(reference)
    ranked = []
    for name, per_cell in by_config.items():
        if not cells or any(c not in per_cell for c in cells):
            continue
        val = {c: _mean([r["val_mse"] for r in per_cell[c]]) for c in cells}
        ref = {c: _mean([r["val_mse"] for r in reference[c]]) for c in cells}
        ranked.append({"config": name, "score": _mean([val[c] / ref[c] for c in cells]), "val": val,
                       "test_mse": {c: _mean([r["test_mse"] for r in per_cell[c]]) for c in cells},
                       "test_mae": {c: _mean([r["test_mae"] for r in per_cell[c]]) for c in cells},
                       "seeds": min(len(per_cell[c]) for c in cells)})  # fmt: skip
    return cells, sorted(ranked, key=lambda b: b["score"])


def table(rows: list[dict], model: str, seq_len: int) -> str:
    """Configurations ranked by their mean validation ratio to the reference, then every run."""
    cells, ranked = scores(rows, model, seq_len)
    heads = [f"{d}-{h}" for d, h in cells]
    lines = [f"{model} at lookback {seq_len}: validation MSE per cell (test MSE / MAE beneath, for reporting only), "
             f"ranked by the mean validation ratio to `{REFERENCE}`.", "",
             "| configuration | seeds | score | " + " | ".join(heads) + " |", "|" + " --- |" * (3 + len(cells))]
    for b in ranked:
        per = " | ".join(f"{b['val'][c]:.4f} ({b['test_mse'][c]:.4f} / {b['test_mae'][c]:.4f})" for c in cells)
        lines.append(f"| {b['config']} | {b['seeds']} | {b['score']:.4f} | {per} |")
    lines += ["", "Every run:", "", "| configuration | data set | horizon | seed | val MSE | test MSE / MAE | "
              "best / run | seconds |", "|" + " --- |" * 8]  # fmt: skip
    mine = [r for r in rows if r["model"] == model and r["seq_len"] == seq_len]
    for r in sorted(mine, key=lambda r: (r["config_name"], r["data"], r["horizon"], r["seed"])):
        if "error" in r:
            lines.append(f"| {r['config_name']} | {r['data']} | {r['horizon']} | {r['seed']} | failed: "
                         f"{r['error'][:60]} | | | {r['seconds']:.0f} |")  # fmt: skip
            continue
        lines.append(f"| {r['config_name']} | {r['data']} | {r['horizon']} | {r['seed']} | {r['val_mse']:.4f} | "
                     f"{r['test_mse']:.4f} / {r['test_mae']:.4f} | {r['best_epoch']}/{r['epochs_run']} | "
                     f"{r['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tsm2")
    parser.add_argument("--seq-len", type=int, default=96)
    parser.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTm1", "Weather"])
    parser.add_argument("--horizons", nargs="+", type=int, default=[96])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                        help="a grid axis (training flag or model config field), repeatable")
    parser.add_argument("--config", action="append", default=[], metavar="'KEY=V KEY=V'",
                        help="one configuration (space-separated KEY=V), repeatable; run instead of the --set grid")
    parser.add_argument("--no-reference", action="store_true",
                        help=f"do not also run the `{REFERENCE}` configuration the grid is scored against")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--data-dir", default=os.environ.get("MAMBAMIXER_DATA") or str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--runs", default="runs/search_defaults", help="folder for the run folders")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--table", action="store_true", help="only print the table built from --results")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if not args.table:
        explicit = [parse_config(text) for text in args.config]
        configs = {args.model: explicit} if explicit else None
        grid = argparse.Namespace(**{**vars(args), "models": [args.model], "configs": configs,
                                     "set": [f"{args.model}:{axis}" for axis in args.set]})
        run_all(grid)
        if (args.set or explicit) and not args.no_reference:  # the reference every configuration is scored against
            run_all(argparse.Namespace(**{**vars(grid), "set": [], "configs": None}))
    text = table(load_rows(Path(args.results)), args.model, args.seq_len)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
