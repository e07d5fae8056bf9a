#!/usr/bin/python3
"""Independent LDS check for tests/eval_test.cpp: reads masks, per-subset query outputs and a
method's train x query scores from a JSON file, computes each query's Spearman correlation between
the subset sums of the scores and the outputs with numpy and scipy.stats.spearmanr, and writes
them (null where undefined) with their mean over the defined ones to a JSON file.

usage: eval_lds_check.py IN.json OUT.json
"""
import json
import sys

import numpy as np
from scipy import stats


def main():
    with open(sys.argv[1]) as f:
        d = json.load(f)
    n, q, m = d["n_train"], d["n_query"], d["m"]
    scores = np.asarray(d["scores"], dtype=np.float64).reshape(n, q)
    masks = np.asarray(d["masks"], dtype=np.float64).reshape(m, n)
    outputs = np.asarray(d["outputs"], dtype=np.float64).reshape(m, q)
    predicted = masks @ scores  # m x q: sum of kept rows' scores
    per = []
    for j in range(q):
        if np.all(outputs[:, j] == outputs[0, j]) or np.all(predicted[:, j] == predicted[0, j]):
            per.append(None)  # spearman is undefined for a constant side
            continue
        rho = stats.spearmanr(predicted[:, j], outputs[:, j]).correlation
        per.append(float(rho))
    defined = [v for v in per if v is not None]
    with open(sys.argv[2], "w") as f:
        json.dump({"per_query": per, "mean": float(np.mean(defined)) if defined else None}, f)


if __name__ == "__main__":
    main()
