#!/usr/bin/python3
"""Builds the issue-10 workload in WORK/<model>/ for each model named: the sklearn digits (1,797 x
64, Debian's python3-sklearn) split 1,497 train / 300 queries with a fixed seed, the training set
cut into 5 contributor tranches by index, datasets in attrace's HDF5 layout (docs/formats.md,
written as tests/fixtures/make_fixtures.py does), the model trained with plain SGD in 5 lr
phases, a TorchScript checkpoint at the end of each phase, run.toml (checkpoint file, step, lr of
its phase) and attrace.toml (exact TracIn, default settings, scores.h5 always written).

Usage: make_data.py WORK MODEL...   (MODEL: mlp | cnn). A model whose folder already holds
attrace.toml is left as it is (delete the folder to rebuild it)."""
import hashlib
import os
import sys

import h5py
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from models import MODELS, input_shape

N_TRAIN, N_QUERY, N_TRANCHES = 1497, 300, 5
SPLIT_SEED = 10          # the split, identical for every model
PHASE_LRS = {"mlp": [0.1, 0.1, 0.05, 0.05, 0.02], "cnn": [0.1, 0.1, 0.05, 0.05, 0.02]}
EPOCHS_PER_PHASE, BATCH = 4, 32


def split():
    """Inputs scaled to [0, 1], labels, and the fixed train/query index split."""
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    if x.shape != (1797, 64):
        raise SystemExit(f"make_data.py: load_digits returned {x.shape}, expected (1797, 64)")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    return x, y, perm[:N_TRAIN], perm[N_TRAIN:N_TRAIN + N_QUERY]


def write_dataset(path, x, y, ids, tranche=None):
    """One dataset in attrace's layout; the training set also gets the tranche table."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "attrace.dataset/1"
        f["inputs"] = x.astype(np.float32)
        f["targets"] = y.astype(np.int64)
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
        if tranche is not None:
            f["tranche"] = tranche.astype(np.int32)
            names = ["digits-%d" % t for t in range(N_TRANCHES)]
            # Accounts derived from the tranche id: stable across runs, well formed (0x + 40 hex digits).
            accounts = ["0x" + hashlib.sha256(n.encode()).hexdigest()[:40] for n in names]
            g = f.create_group("tranches")
            g.create_dataset("id", data=names, dtype=h5py.string_dtype())
            g.create_dataset("account", data=accounts, dtype=h5py.string_dtype())
            g.create_dataset("name", data=["digits rows %d of 5" % (t + 1) for t in range(N_TRANCHES)],
                             dtype=h5py.string_dtype())
            g.create_dataset("license", data=["BSD-3-Clause"] * N_TRANCHES, dtype=h5py.string_dtype())


def train_and_save(name, out, xt, yt, xq, yq):
    """Plain SGD (what TracInCP's lr weighting assumes); a checkpoint after each lr phase."""
    torch.manual_seed(0)
    model = MODELS[name]()
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    xt_t, yt_t = torch.from_numpy(xt), torch.from_numpy(yt)
    loss_fn = nn.CrossEntropyLoss()
    run, step = ["# %s: %d parameters, plain SGD, batch %d, %d epochs per lr phase\n\n"
                 % (name, n_params, BATCH, EPOCHS_PER_PHASE)], 0
    for c, lr in enumerate(PHASE_LRS[name]):
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        model.train()
        for _ in range(EPOCHS_PER_PHASE):
            order = torch.randperm(len(xt_t), generator=gen)
            for b in range(0, len(order), BATCH):
                idx = order[b:b + BATCH]
                opt.zero_grad()
                loss_fn(model(xt_t[idx]), yt_t[idx]).backward()
                opt.step()
                step += 1
        model.eval()
        fname = "ckpt_%d.pt" % (c + 1)
        torch.jit.save(torch.jit.script(model), os.path.join(out, fname))
        run.append('[[checkpoint]]\nfile = "%s"\nstep = %d\nlr = %r\n\n' % (fname, step, lr))
        with torch.no_grad():
            acc_t = (model(xt_t).argmax(1) == yt_t).float().mean().item()
            acc_q = (model(torch.from_numpy(xq)).argmax(1) == torch.from_numpy(yq)).float().mean().item()
        print(f"  {name} checkpoint {c + 1}: step {step}, lr {lr}, train acc {acc_t:.3f}, query acc {acc_q:.3f}")
    with open(os.path.join(out, "run.toml"), "w") as f:
        f.write("".join(run))
    return n_params


def main(work, names):
    x, y, tr, qu = split()
    tranche = np.arange(N_TRAIN) * N_TRANCHES // N_TRAIN   # 5 contiguous blocks of the shuffled training set
    for name in names:
        if name not in MODELS:
            raise SystemExit(f"make_data.py: unknown model '{name}' (mlp | cnn)")
        out = os.path.join(work, name)
        if os.path.exists(os.path.join(out, "attrace.toml")):
            print(f"  {name}: reusing {out}")
            continue
        os.makedirs(out, exist_ok=True)
        shape = input_shape(name)
        xt, xq = x[tr].reshape((-1,) + shape), x[qu].reshape((-1,) + shape)
        write_dataset(os.path.join(out, "train.h5"), xt, y[tr], ["digit-%04d" % i for i in tr], tranche)
        write_dataset(os.path.join(out, "query.h5"), xq, y[qu], ["digit-%04d" % i for i in qu])
        n_params = train_and_save(name, out, xt, y[tr], xq, y[qu])
        with open(os.path.join(out, "attrace.toml"), "w") as f:
            f.write("# issue-10 benchmark: exact TracIn, everything else at attrace's defaults\n"
                    "[run]\ncheckpoints = \"run.toml\"\n\n[data]\ntrain = \"train.h5\"\nquery = \"query.h5\"\n\n"
                    "[gradients]\nloss = \"cross_entropy\"\n\n[projection]\nkind = \"none\"\n\n"
                    "[output]\nscores = \"always\"\n")
        print(f"  {name}: {n_params} parameters, {N_TRAIN} train / {N_QUERY} queries, {N_TRANCHES} tranches -> {out}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
