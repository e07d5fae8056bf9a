#!/usr/bin/python3
"""Training-step time with and without attrace.Recorder (docs/recorder.md), same process.

PYTHONPATH=build/python /usr/bin/python3 bench/python/bench_recorder.py [threads]

Models: the demo MLP 64-32-10 (batch 32; every layer within k = 4096: exact features) and an
MLP 784-512-512-10 (batch 64; every layer Kronecker-projected). SGD, cross-entropy, every step
recorded, k = 4096 per layer. Plain and recorded runs alternate in rounds; the median step time
of each is reported, with the recorder's projection and write time per step (C++ side); the rest
of the overhead is capture (hooks, numpy views, bias columns, gradient scaling, parameter views).
"""
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import attrace


def run(sizes, batch, steps, recorder_dir=None):
    torch.manual_seed(1)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    n = 64 * batch
    x = torch.rand(n, sizes[0])
    y = torch.randint(sizes[-1], (n,))
    perm = torch.randperm(n)
    rec = attrace.Recorder(model, store=recorder_dir, k=4096).attach() if recorder_dir else None
    for s in range(steps + 8):
        if s == 8:  # warm-up done
            t0 = time.perf_counter()
            base = dict(rec.timings) if rec else {}
        ids = perm[(s % 64) * batch:(s % 64 + 1) * batch]
        loss = torch.nn.functional.cross_entropy(model(x[ids]), y[ids])
        opt.zero_grad()
        loss.backward()
        if rec:
            rec.step(ids, 0.01)
        opt.step()
    extra = {}
    if rec:
        rec.flush()  # the pending steps' segment belongs to the measured steps
        t = rec.timings
        extra = {k: (v - base[k]) / steps for k, v in t.items()}
    elapsed = (time.perf_counter() - t0) / steps
    if rec:
        rec.detach()
        rec.close()
    return elapsed, extra


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    print("torch %s, %d thread(s), numpy %s" % (torch.__version__, threads, np.__version__))
    for name, sizes, batch, steps in [("demo MLP 64-32-10", [64, 32, 10], 32, 400),
                                      ("MLP 784-512-512-10", [784, 512, 512, 10], 64, 100)]:
        plain, recorded, proj, write = [], [], [], []
        for _ in range(3):
            plain.append(run(sizes, batch, steps)[0])
            d = tempfile.mkdtemp(prefix="attrace-pybench-")
            try:
                t, extra = run(sizes, batch, steps, os.path.join(d, "rec"))
            finally:
                shutil.rmtree(d)
            recorded.append(t)
            proj.append(extra["project"])
            write.append(extra["write"])
        p, r = statistics.median(plain), statistics.median(recorded)
        print("%-20s batch %3d: plain %8.1f us/step, recorded %8.1f us/step, overhead %+6.1f%%; "
              "per step: projection %.1f us, write %.1f us, capture (rest) %.1f us"
              % (name, batch, 1e6 * p, 1e6 * r, 100 * (r - p) / p, 1e6 * statistics.median(proj),
                 1e6 * statistics.median(write), 1e6 * (r - p - statistics.median(proj) - statistics.median(write))))


if __name__ == "__main__":
    main()
