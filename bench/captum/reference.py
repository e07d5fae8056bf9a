#!/usr/bin/python3
"""Float64 TracIn reference for one benchmark model: score(i, j) = sum_c lr_c <g_c(i), g_c(j)>, with
g_c(x) the gradient of x's own cross-entropy loss with respect to every parameter at checkpoint c.
Each example gets its own forward and backward pass in torch float64 (a plain loop: independent of
both tools' batching tricks, hooks and factorizations). Writes MODEL_DIR/reference.h5 with /scores
float64 [n_train, n_query] (train x query, attrace's layout) and /self_influence.

Usage: reference.py MODEL_DIR MODEL (mlp | cnn)"""
import os
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from models import MODELS, load_state, read_run

TRAIN_CHUNK = 128   # training rows whose gradients are held at once (memory, not results)


def per_example_grads(model, params, x, y):
    """[len(x), n_params] float64 gradients, one backward pass per example."""
    out = torch.empty(len(x), sum(p.numel() for p in params), dtype=torch.float64)
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum")
        grads = torch.autograd.grad(loss, params)
        out[i] = torch.cat([g.reshape(-1) for g in grads])
    return out


def set_threads():
    """Every core unless THREADS says otherwise: this torch build defaults to one thread here, and
    the peers must get the same cores (run.sh passes the same count to attrace)."""
    torch.set_num_threads(int(os.environ.get("THREADS") or os.cpu_count()))


def main(model_dir, name):
    t0 = time.time()
    set_threads()
    with h5py.File(f"{model_dir}/train.h5", "r") as f:
        xt, yt = torch.from_numpy(f["inputs"][:]).double(), torch.from_numpy(f["targets"][:])
    with h5py.File(f"{model_dir}/query.h5", "r") as f:
        xq, yq = torch.from_numpy(f["inputs"][:]).double(), torch.from_numpy(f["targets"][:])
    scores = torch.zeros(len(xt), len(xq), dtype=torch.float64)
    self_inf = torch.zeros(len(xt), dtype=torch.float64)
    model = MODELS[name]().double().eval()
    params = list(model.parameters())
    for path, lr in read_run(model_dir):
        state = load_state(path)
        model.load_state_dict({k: v.double() for k, v in state.items()})
        gq = per_example_grads(model, params, xq, yq)
        for b in range(0, len(xt), TRAIN_CHUNK):
            gt = per_example_grads(model, params, xt[b:b + TRAIN_CHUNK], yt[b:b + TRAIN_CHUNK])
            scores[b:b + len(gt)] += lr * (gt @ gq.T)
            self_inf[b:b + len(gt)] += lr * (gt * gt).sum(1)
        print(f"  reference {name}: {path} (lr {lr}) done, {time.time() - t0:.1f} s", flush=True)
    with h5py.File(f"{model_dir}/reference.h5", "w") as f:
        f["scores"] = scores.numpy()
        f["self_influence"] = self_inf.numpy()
        f.attrs["params"] = sum(p.numel() for p in params)
    print(f"  reference {name}: {len(xt)} x {len(xq)} float64 scores in {time.time() - t0:.1f} s, "
          f"||S||_F = {np.linalg.norm(scores.numpy()):.6g}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
