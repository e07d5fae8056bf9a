#!/usr/bin/python3
"""Training-step time with and without attrace.Recorder (docs/recorder.md), same process.

PYTHONPATH=build/python /usr/bin/python3 bench/python/bench_recorder.py [rounds] [threads] [model filter]

Models (the C++ bench's): the demo MLP 64-32-10 (batch 32; every layer within k = 4096: exact
features), an MLP 784-512-512-10 (batch 64; every layer projected) and the benchmark CNN on 8x8
images, Conv2d(1,16,3,p1) ReLU Conv2d(16,32,3,p1) ReLU MaxPool2 Flatten Linear(512,10) (batch 64);
and (Python only: the C++ Recorder takes Sequentials) a small GPT, 2 pre-LayerNorm blocks of width
128 with 4 heads, 256 tokens, context 64 (batch 16; its 13 nn.Linear layers recorded, 64 positions
each; the next-token loss). SGD, cross-entropy, every step recorded, k = 4096 per layer. Plain and recorded runs alternate in
rounds; medians are reported. A recorded run's time includes closing the recording (draining the
writer's queue and the last fsync). Columns per step: the C++ writer's capture (copies into its
queue) and wait (queue full, final drain) on the training thread, projection and write on the
writer thread, sync (fsyncs) on the sync thread; thr.: the training thread's CPU time (Python
hooks and tensor conversions included), cpu: the process's. Each model is recorded twice per round,
live (the writer projects) and deferred (defer=True: the writer stores the captured tensors and
finalize projects them), and a third time with the default (defer="auto") and window=16 (16
recorded steps per checkpoint: parameters kept once per 16 steps), beside the same plain runs. Run with OPENBLAS_NUM_THREADS=1 for one
thread (torch.set_num_threads does not reach OpenBLAS's own threads).
"""
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import attrace


class Block(torch.nn.Module):
    """A pre-LayerNorm transformer block: causal attention (q, k, v, o; 4 heads) and a GELU MLP."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        b, n, d = x.shape
        e = d // self.heads
        h = self.ln1(x)
        q = self.q(h).reshape(b, n, self.heads, e).transpose(1, 2)
        k = self.k(h).reshape(b, n, self.heads, e).transpose(1, 2)
        v = self.v(h).reshape(b, n, self.heads, e).transpose(1, 2)
        s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(e))
        s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), 1), float("-inf"))
        att = torch.matmul(s.softmax(-1), v).transpose(1, 2).reshape(b, n, d)
        x = x + self.o(att)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class TinyGPT(torch.nn.Module):
    """Token and position embeddings, 2 blocks of width 128, a head over 256 tokens (0.6 M parameters)."""

    def __init__(self, vocab=256, width=128, blocks=2, context=64):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, width)
        self.pos = torch.nn.Parameter(0.02 * torch.randn(context, width))
        self.blocks = torch.nn.Sequential(*[Block(width, 4) for _ in range(blocks)])
        self.ln = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, ids):
        return self.head(self.ln(self.blocks(self.emb(ids) + self.pos[: ids.size(1)])))


def make(name):
    torch.manual_seed(1)
    if name.startswith("GPT"):
        return TinyGPT(), (64,), 16
    if name.startswith("CNN"):
        model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 10))
        return model, (1, 8, 8), 64
    sizes = [64, 32, 10] if name.startswith("demo") else [784, 512, 512, 10]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers), (sizes[0],), 32 if name.startswith("demo") else 64


def run(name, steps, recorder_dir=None, defer=False, window=1):
    model, shape, batch = make(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    n = 64 * batch
    g = torch.Generator().manual_seed(2)
    lm = name.startswith("GPT")
    x = torch.randint(256, (n,) + shape, generator=g) if lm else torch.rand((n,) + shape, generator=g)
    y = torch.randint(256, (n,) + shape, generator=g) if lm else torch.randint(10, (n,), generator=g)
    perm = torch.randperm(n, generator=g)
    rec = attrace.Recorder(model, store=recorder_dir, k=4096, defer=defer, window=window).attach() if recorder_dir else None
    for s in range(steps + 8):
        if s == 8:  # warm-up done
            if rec:
                rec.flush()
            base = dict(rec.timings) if rec else {}
            t0, c0, tc0 = time.perf_counter(), time.process_time(), time.thread_time()
        ids = perm[(s % 64) * batch:(s % 64 + 1) * batch]
        out = model(x[ids])
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), y[ids].reshape(-1))
        opt.zero_grad()
        loss.backward()
        if rec:
            rec.step(ids, 0.01)
        opt.step()
    extra = {}
    if rec:
        t_close = time.perf_counter()
        rec.detach()
        times = dict(rec.timings)  # before close: the writer's counters
        rec.close()  # drains the queue and makes the last segment durable: part of the cost
        extra = {k: (v - base[k]) / steps for k, v in times.items() if k != "steps"}
        extra["wait"] += (time.perf_counter() - t_close) / steps
    wall = (time.perf_counter() - t0) / steps
    return wall, (time.process_time() - c0) / steps, (time.thread_time() - tc0) / steps, extra


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    torch.set_num_threads(threads)
    print("torch %s, %d thread(s), numpy %s, %d rounds" % (torch.__version__, threads, np.__version__, rounds))
    print("%-28s | %9s %9s %8s | %8s %8s %8s %8s %8s | %8s %8s %8s %8s" % (
        "model", "plain us", "rec. us", "overhead", "capture", "wait", "project", "write", "sync", "thr.pl.", "thr.rec.",
        "cpu pl.", "cpu rec."))
    for name, steps in [("demo MLP 64-32-10", 1000), ("MLP 784-512-512-10", 200), ("CNN 8x8 (16, 32 ch.)", 200),
                        ("GPT 2x128, T 64", 60)]:
        if only and only not in name:
            continue
        keys = ["rec", "crec", "trec", "capture", "wait", "project", "write", "sync"]
        rows = {k: [] for k in ["plain", "cpl", "tpl"]}
        modes = ("live", "defer", "window 16")
        for mode in modes:
            rows.update({mode + k: [] for k in keys})
        for _ in range(rounds):
            w, c, tc, _ = run(name, steps)
            rows["plain"].append(w)
            rows["cpl"].append(c)
            rows["tpl"].append(tc)
            for mode in modes:
                d = tempfile.mkdtemp(prefix="attrace-pybench-")
                try:
                    w, c, tc, extra = run(name, steps, os.path.join(d, "rec"),
                                          defer={"live": False, "defer": True}.get(mode, "auto"),
                                          window=16 if mode == "window 16" else 1)
                finally:
                    shutil.rmtree(d)
                rows[mode + "rec"].append(w)
                rows[mode + "crec"].append(c)
                rows[mode + "trec"].append(tc)
                for k in ["capture", "wait", "project", "write", "sync"]:
                    rows[mode + k].append(extra[k])
        m = {k: 1e6 * statistics.median(v) for k, v in rows.items()}
        for mode in modes:
            r = {k: m[mode + k] for k in keys}
            print("%-28s | %9.1f %9.1f %+7.1f%% | %8.1f %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f %8.1f" % (
                name + " " + mode, m["plain"], r["rec"], 100 * (r["rec"] - m["plain"]) / m["plain"], r["capture"], r["wait"],
                r["project"], r["write"], r["sync"], m["tpl"], r["trec"], m["cpl"], r["crec"]))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
