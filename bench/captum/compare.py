#!/usr/bin/python3
"""Turns run.sh's measurements into the results table: per model and tool, the wall time of the
whole process, the speed-up over Captum's process on the same model in the same run, and the
normwise relative error ||S - S_ref||_F / ||S_ref||_F of its train x query scores against the
float64 reference (reference.py). Reads WORK/runs.tsv (model, tool, label, wall s, peak RSS KiB,
output dir, 1-minute load average before the run); prints the table and writes it, with the
machine facts of WORK/machine.txt, to WORK/results.md.

Usage: compare.py WORK"""
import json
import os
import sys

import h5py
import numpy as np


def scores_of(tool, out_dir):
    """The tool's [n_train, n_query] float64 score matrix."""
    with h5py.File(os.path.join(out_dir, "scores.h5"), "r") as f:
        return f["scores"][:]


def describe(tool, label, out_dir):
    """The setting column: what the run actually used, read from its own records."""
    if tool == "attrace":
        m = json.load(open(os.path.join(out_dir, "manifest.json")))
        s = m["settings"]
        paths = sorted({c.get("gradient_path", c.get("path", "?")) for c in m["run"].get("checkpoints", [])})
        return (f"{label}: scoring={s['attribution']['scoring']}, path={'/'.join(paths) or '?'}, "
                f"{s['gradients']['precision']}, projection={s['projection']['kind']}")
    t = json.load(open(os.path.join(out_dir, "timing.json")))
    return (f"TracInCP {t['captum_version']}, train batch {t['train_batch']}, sample-wise grads, "
            f"{t['torch_threads']} threads; influence() {t['influence_s']:.1f} s")


def main(work):
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(work, "runs.tsv")) if line.strip()]
    captum_wall = {r[0]: float(r[3]) for r in rows if r[1] == "captum"}
    lines = ["| model | tool | setting | wall s | speed-up vs Captum | normwise error vs fp64 | peak RSS GB | load |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for model, tool, label, wall, rss_kb, out_dir, load in rows:
        with h5py.File(os.path.join(work, model, "reference.h5"), "r") as f:
            ref = f["scores"][:]
        s = scores_of(tool, out_dir)
        if s.shape != ref.shape:
            raise SystemExit(f"compare.py: {out_dir}/scores.h5 has shape {s.shape}, reference {ref.shape}")
        err = np.linalg.norm(s - ref) / np.linalg.norm(ref)
        speed = f"{captum_wall[model] / float(wall):.2f}x" if model in captum_wall else "n/a"
        rss = f"{int(rss_kb) / 2**20:.2f}" if rss_kb.isdigit() else "?"
        lines.append(f"| {model} | {tool} | {describe(tool, label, out_dir)} | {float(wall):.1f} | {speed} | "
                     f"{err:.2e} | {rss} | {load} |")
    machine = open(os.path.join(work, "machine.txt")).read().rstrip()
    notes = ("wall s: the whole process (attrace CLI: load, featurize, score, reports, scores.h5; Captum: "
             "Python start, imports, data, TracInCP.influence, scores.h5). Speed-up: Captum's wall time "
             "over the row's, same model, same run. Error: ||S - S_ref||_F / ||S_ref||_F against "
             "float64 per-example gradients (reference.py). Load: the 1-minute load average "
             "when the run started (the machine's other work slows every row).")
    text = "\n".join(["# attrace vs Captum TracInCP (issue 10 workload)", "", machine, "", *lines, "", notes, ""])
    if not captum_wall:
        text += "\nCaptum was skipped (CAPTUM_SRC unset): no speed-up column.\n"
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
