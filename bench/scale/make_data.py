#!/usr/bin/python3
"""Large synthetic datasets for the scale benchmark (bench/scale/run.sh), in the dataset layout of
docs/formats.md ("Dataset"). Rows are resampled from the digits written by `attrace demo` (its
train.h5 for a training set, its query.h5 for a query set) with small uniform pixel noise, so every
row is distinct and the demo's model still sees digit-like inputs; labels are kept. A training set
gets a tranche table of --tranches contributors (contiguous runs of rows of random length, each
with at least one row, an 0x + 40-hex account derived from its id). Fixed seed: same arguments,
same file contents.

Usage: make_data.py --demo DIR --n N --out FILE.h5 [--query] [--tranches 100] [--seed 1]
"""
import argparse
import hashlib

import h5py
import numpy as np

NOISE = 0.02  # under a third of one of the digits' 16 grey levels (1/16 = 0.0625)
CHUNK = 1 << 18  # rows generated and written at a time (bounds this script's memory)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="directory written by `attrace demo --dir`")
    ap.add_argument("--n", type=int, required=True, help="rows to write")
    ap.add_argument("--out", required=True, help="dataset file to write (.h5)")
    ap.add_argument("--query", action="store_true", help="a query set (no tranches), resampled from query.h5")
    ap.add_argument("--tranches", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.n < 1 or (not a.query and not 1 <= a.tranches <= a.n):
        ap.error("need n >= 1 and 1 <= tranches <= n")

    with h5py.File(f"{a.demo}/{'query' if a.query else 'train'}.h5", "r") as src:
        base_x = np.asarray(src["inputs"], dtype=np.float32)
        base_y = np.asarray(src["targets"], dtype=np.int64)
    rng = np.random.default_rng(a.seed + (1 << 20 if a.query else 0))
    prefix = "q" if a.query else "t"

    with h5py.File(a.out, "w") as f:
        x = f.create_dataset("inputs", shape=(a.n, base_x.shape[1]), dtype=np.float32, chunks=(min(a.n, 16384), base_x.shape[1]))
        y = f.create_dataset("targets", shape=(a.n,), dtype=np.int64)
        for r0 in range(0, a.n, CHUNK):
            r1 = min(a.n, r0 + CHUNK)
            pick = rng.integers(0, len(base_x), r1 - r0)
            noise = rng.random((r1 - r0, base_x.shape[1]), dtype=np.float32) * (2 * NOISE) - NOISE
            x[r0:r1] = np.clip(base_x[pick] + noise, 0.0, 1.0)
            y[r0:r1] = base_y[pick]
        f.create_dataset("ids", data=[f"{prefix}{i:08d}" for i in range(a.n)], dtype=h5py.string_dtype())
        if a.query:
            return
        # Tranche sizes: T-1 distinct cut points in (0, n), so every tranche holds at least one row.
        cuts = np.sort(rng.choice(np.arange(1, a.n), size=a.tranches - 1, replace=False)) if a.tranches > 1 else []
        bounds = np.concatenate([[0], cuts, [a.n]]).astype(np.int64)
        tranche = np.repeat(np.arange(a.tranches, dtype=np.int32), np.diff(bounds))
        assert len(tranche) == a.n and np.all(np.diff(bounds) > 0)
        f["tranche"] = tranche
        ids = [f"contrib-{k:03d}" for k in range(a.tranches)]
        g = f.create_group("tranches")
        g.create_dataset("id", data=ids, dtype=h5py.string_dtype())
        g.create_dataset("account", data=["0x" + hashlib.sha256(("attrace-scale:" + t).encode()).hexdigest()[:40] for t in ids],
                         dtype=h5py.string_dtype())
        g.create_dataset("name", data=[f"synthetic contributor {k}" for k in range(a.tranches)], dtype=h5py.string_dtype())
        g.create_dataset("license", data=["CC-BY-4.0"] * a.tranches, dtype=h5py.string_dtype())


if __name__ == "__main__":
    main()
