#!/usr/bin/python3
"""Training-step time with and without attrace.Recorder (docs/recorder.md), same process.

PYTHONPATH=build/python /usr/bin/python3 bench/python/bench_recorder.py [rounds] [threads] [model filter]

Models (the C++ bench's): the demo MLP 64-32-10 (batch 32; every layer within k = 4096: exact
features), an MLP 784-512-512-10 (batch 64; every layer projected) and the benchmark CNN on 8x8
images, Conv2d(1,16,3,p1) ReLU Conv2d(16,32,3,p1) ReLU MaxPool2 Flatten Linear(512,10) (batch 64);
and (Python only: the C++ Recorder takes Sequentials) a small GPT, 2 pre-LayerNorm blocks of width
128 with 4 heads, 256 tokens, context 64 (batch 16; its 13 nn.Linear layers recorded, 64 positions
each; the next-token loss). SGD, cross-entropy, every step recorded, k = 4096 per layer.

Plain and recorded blocks of steps alternate in one process (P L P D P W P L ...), each model
training on: a recorded block's overhead is its time over the mean of the plain blocks just
before and after it (the VM's speed drifts from minute to minute, adjacent blocks see the same
machine); the median over rounds is reported, with the range. A recorded block ends with flush()
(the writer's queue drained, the segment made durable), so the writer's work stays inside it;
that is one fsync per block beyond the recorder's own (one per 64 steps). close ms: closing each
recording at the end, once per training run. Columns per step: the C++ writer's capture (copies
into its queue) and wait (queue full, flush) on the training thread, projection and write on the
writer thread, sync (fsyncs) on the sync thread; thr.: the training thread's CPU time (the C++
capture included), cpu: the process's. Each model is recorded three ways: live (the writer
projects), deferred (defer=True: the writer stores the captured tensors and finalize projects
them), and with the default (defer="auto") and window=16 (16 recorded steps per checkpoint:
parameters kept once per 16 steps). A second table times a plain and a recorded model taking
turns step by step (the cost inside the step, with the writer's interference split between
both). Run with OPENBLAS_NUM_THREADS=1 for one
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


# (name, steps per block): about 0.2-1 s per block on the project VM.
MODELS = [("demo MLP 64-32-10", 1000), ("MLP 784-512-512-10", 200), ("CNN 8x8 (16, 32 ch.)", 200), ("GPT 2x128, T 64", 60)]


class Trainer:
    """One model training on its data, plain or through a Recorder; block(n) times n steps."""

    def __init__(self, name, recorder_dir=None, defer=False, window=1):
        self.model, shape, self.batch = make(name)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        n = 64 * self.batch
        g = torch.Generator().manual_seed(2)
        self.lm = name.startswith("GPT")
        self.x = torch.randint(256, (n,) + shape, generator=g) if self.lm else torch.rand((n,) + shape, generator=g)
        self.y = torch.randint(256, (n,) + shape, generator=g) if self.lm else torch.randint(10, (n,), generator=g)
        self.perm = torch.randperm(n, generator=g)
        self.rec = attrace.Recorder(self.model, store=recorder_dir, k=4096, defer=defer,
                                    window=window).attach() if recorder_dir else None
        self.s = 0
        self.block(8)  # warm-up

    def step(self):
        ids = self.perm[(self.s % 64) * self.batch:(self.s % 64 + 1) * self.batch]
        self.s += 1
        out = self.model(self.x[ids])
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), self.y[ids].reshape(-1))
        self.opt.zero_grad()
        loss.backward()
        if self.rec:
            self.rec.step(ids, 0.01)
        self.opt.step()

    def block(self, steps):
        """Seconds per step (wall, training thread CPU, process CPU) and the writer's timings per
        step over `steps` steps; a recorded block ends with flush() (the writer's queue drained and
        the segment made durable), so all of its work is inside the block's time."""
        base = dict(self.rec.timings) if self.rec else {}
        t0, c0, tc0 = time.perf_counter(), time.process_time(), time.thread_time()
        for _ in range(steps):
            self.step()
        if self.rec:
            self.rec.flush()
        wall, cpu, thr = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - tc0
        extra = {k: (v - base[k]) / steps for k, v in self.rec.timings.items() if k != "steps"} if self.rec else {}
        return wall / steps, thr / steps, cpu / steps, extra

    def close(self):
        """Seconds to close the recording (detach, drain, last fsync, join the threads)."""
        if not self.rec:
            return 0.0
        t = time.perf_counter()
        self.rec.detach()
        self.rec.close()
        return time.perf_counter() - t


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    torch.set_num_threads(threads)
    print("torch %s, %d thread(s), numpy %s, %d rounds" % (torch.__version__, threads, np.__version__, rounds))
    print("%-28s | %9s %9s %8s %8s | %8s %8s %8s %8s %8s | %8s %8s %8s %8s | %8s" % (
        "model", "plain us", "rec. us", "overhead", "range", "capture", "wait", "project", "write", "sync", "thr.pl.",
        "thr.rec.", "cpu pl.", "cpu rec.", "close ms"))
    for name, steps in MODELS:
        if only and only not in name:
            continue
        modes = ("live", "defer", "window 16")
        work = tempfile.mkdtemp(prefix="attrace-pybench-")
        try:
            plain = Trainer(name)
            rec = {mode: Trainer(name, os.path.join(work, mode.replace(" ", "")), defer={"live": False, "defer": True}.get(mode, "auto"),
                                 window=16 if mode == "window 16" else 1) for mode in modes}
            # Plain and recorded blocks alternate, P L P D P W P L ...: each recorded block is
            # compared with the mean of the plain blocks just before and after it (the VM's speed
            # drifts from minute to minute; adjacent blocks see the same machine).
            blocks = {mode: [] for mode in modes}
            plains = [plain.block(steps)]
            for _ in range(rounds):
                for mode in modes:
                    blocks[mode].append(rec[mode].block(steps))
                    plains.append(plain.block(steps))
            close = {mode: rec[mode].close() for mode in modes}
        finally:
            shutil.rmtree(work)
        med = lambda v: 1e6 * statistics.median(v)  # noqa: E731
        for m_i, mode in enumerate(modes):
            ratios, pl_wall, pl_thr, pl_cpu = [], [], [], []
            for r, b in enumerate(blocks[mode]):
                before, after = plains[r * len(modes) + m_i], plains[r * len(modes) + m_i + 1]
                base = [(before[j] + after[j]) / 2 for j in range(3)]
                ratios.append(b[0] / base[0] - 1)
                pl_wall.append(base[0])
                pl_thr.append(base[1])
                pl_cpu.append(base[2])
            ex = {k: med([b[3][k] for b in blocks[mode]]) for k in ["capture", "wait", "project", "write", "sync"]}
            print("%-28s | %9.1f %9.1f %+7.1f%% %+3.0f..%+3.0f | %8.1f %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f %8.1f | %8.2f" % (
                name + " " + mode, med(pl_wall), med([b[0] for b in blocks[mode]]), 100 * statistics.median(ratios),
                100 * min(ratios), 100 * max(ratios), ex["capture"], ex["wait"], ex["project"], ex["write"], ex["sync"],
                med(pl_thr), med([b[1] for b in blocks[mode]]), med(pl_cpu), med([b[2] for b in blocks[mode]]),
                1e3 * close[mode]))
        sys.stdout.flush()
    # Second measure: a plain and a recorded model take turns step by step, each step timed
    # alone. The drift cancels almost entirely, which isolates the cost inside the step (the
    # training thread's hooks, copies and waits); the writer threads' interference falls on both
    # models alike, so it counts half. The blocks above count it in full.
    print("\nsteps interleaved one by one (%d x the block's steps per mode)" % rounds)
    print("%-28s | %9s %9s %9s %8s" % ("model", "plain us", "rec. us", "diff us", "overhead"))
    for name, steps in MODELS:
        if only and only not in name:
            continue
        for mode in ("live", "defer", "window 16"):
            work = tempfile.mkdtemp(prefix="attrace-pybench-")
            try:
                plain = Trainer(name)
                rec = Trainer(name, os.path.join(work, "rec"), defer={"live": False, "defer": True}.get(mode, "auto"),
                              window=16 if mode == "window 16" else 1)
                tp = tr = 0.0
                for _ in range(rounds * steps):
                    t = time.perf_counter()
                    plain.step()
                    t1 = time.perf_counter()
                    rec.step()
                    t2 = time.perf_counter()
                    tp += t1 - t
                    tr += t2 - t1
                rec.close()
            finally:
                shutil.rmtree(work)
            n = rounds * steps
            print("%-28s | %9.1f %9.1f %+9.1f %+7.1f%%" % (name + " " + mode, 1e6 * tp / n, 1e6 * tr / n, 1e6 * (tr - tp) / n,
                                                          100 * (tr / tp - 1)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
