#!/usr/bin/python3
"""The attrace Python module (docs/recorder.md), run by ctest with /usr/bin/python3 and
PYTHONPATH=<build>/python, ATTRACE_BIN=<build>/cli/attrace. Plain asserts, no pytest.

1. A PyTorch loop recorded with attrace.Recorder (every 2nd step, k = 64 so both layers are
   projected) stores exactly recorded_rows() of the per-example factors computed independently
   here with a summed loss (bit for bit: batch 8 is a power of two, so undoing the mean is exact).
2. The finalized store equals `attrace featurize` on the saved checkpoints (float32 rounding: the
   CLI's fixed-order product vs torch's GEMM), zero rows for examples outside a step's batch.
3. attrace.score + load_report: scores.h5 equals sum_c F_c Q_c^T computed here in float64 from the
   store and a query store made by `attrace featurize --query` (exact TracIn over recorded steps).
4. Resuming: a second Recorder on the directory continues after the last recorded step.
5. A CNN (Conv2d with padding="same" and dilation 2, a rectangular kernel with stride (1, 2) and no
   bias, then Linear): stored rows equal recorded_rows() of independently captured NCHW inputs and
   output gradients bit for bit (the unfolding happens in C++), and the finalized store equals
   `attrace featurize` on the saved checkpoints (the CLI's chain path) to float32 rounding.
6. The Python example of docs/recorder.md runs as it stands there (read from the file) with a
   loader of 4 batches, and its report has a score for every (train, query) pair.
7. A model that is not an nn.Sequential: a small transformer language model (token embedding,
   learned positions, a pre-LayerNorm block with q/k/v/o attention and a GELU MLP, a head) trained
   on a token dataset with the next-token loss: its nn.Linear layers (3-D inputs: T positions per
   example) are recorded; the finalized config selects their parameters only; the store equals
   `attrace featurize` of the finalized config (the CLI's graph path) to float32 rounding; a layer
   applied twice in one forward and a Conv2d outside a Sequential are refused. With window=2 the
   parameters are kept at each window's first step only, and finalize writes one checkpoint per
   window.
"""
import copy
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

import attrace

N, D, H, C, B = 40, 12, 24, 5, 8
K, SEED = 64, 7


def write_dataset(path, x, y, tranches, prefix="ex"):
    """An HDF5 dataset: float inputs (token ids when x is integer) and integer targets, example ids
    PREFIX000.., and `tranches` tranches dealt round-robin (0: a query set)."""
    with h5py.File(path, "w") as f:
        f["inputs"] = x.astype(np.int64 if np.issubdtype(x.dtype, np.integer) else np.float32)
        f["targets"] = y.astype(np.int64)
        f.create_dataset("ids", data=["%s%03d" % (prefix, i) for i in range(len(x))], dtype=h5py.string_dtype())
        if tranches:
            f["tranche"] = (np.arange(len(x)) % tranches).astype(np.int32)
            g = f.create_group("tranches")
            g.create_dataset("id", data=["t%d" % k for k in range(tranches)], dtype=h5py.string_dtype())
            g.create_dataset("account", data=["0x" + ("%x" % (k + 10)) * 40 for k in range(tranches)],
                             dtype=h5py.string_dtype())


def store_rows(path, c):
    with h5py.File(path, "r") as f:
        return f["checkpoint_%06d" % c]["features"][:].astype(np.float64)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="attrace-py-recorder-")
    rng = np.random.default_rng(1)
    x_all = rng.uniform(-1, 1, (N, D)).astype(np.float32)
    y_all = rng.integers(0, C, N)
    train, query = os.path.join(tmp, "train.h5"), os.path.join(tmp, "query.h5")
    write_dataset(train, x_all, y_all, 2)
    write_dataset(query, rng.uniform(-1, 1, (6, D)).astype(np.float32), rng.integers(0, C, 6), 0)

    model = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, C))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    xt, yt = torch.from_numpy(x_all), torch.from_numpy(y_all)
    rec_dir = os.path.join(tmp, "rec")
    expected = []  # per recorded step: (ids, rows from independently computed factors)
    layers = [(name, m.in_features + 1, m.out_features, True, None) for name, m in model.named_children()
              if isinstance(m, torch.nn.Linear)]
    with attrace.Recorder(model, store=rec_dir, k=K, seed=SEED, every=2, flush_steps=2) as rec:
        for s in range(6):
            ids = torch.from_numpy(rng.permutation(N)[:B])
            lr = 0.5 - 0.05 * s
            for g in opt.param_groups:
                g["lr"] = lr
            if s % 2 == 0:
                # Independent per-example factors: inputs and d(sum of losses)/d(outputs).
                with torch.no_grad():
                    h0 = xt[ids]
                    h1 = torch.relu(model[0](h0))
                z1 = model[0](xt[ids])
                z1.retain_grad()
                z2 = model[2](torch.relu(z1))
                z2.retain_grad()
                torch.nn.functional.cross_entropy(z2, yt[ids], reduction="sum").backward()
                ones = np.ones((B, 1), np.float32)
                xs = [np.hstack([h0.numpy(), ones]), np.hstack([h1.numpy(), ones])]
                ds = [z1.grad.numpy().copy(), z2.grad.numpy().copy()]
                opt.zero_grad()
                rows = attrace.recorded_rows(layers, K, SEED, "rademacher", "f32", len(expected), lr, xs, ds, B)
                expected.append((ids.numpy().copy(), rows))
            loss = torch.nn.functional.cross_entropy(model(xt[ids]), yt[ids])
            opt.zero_grad()
            loss.backward()
            assert rec.step(ids, lr) == (s % 2 == 0)
            opt.step()
    # 1. stored rows = recorded_rows of independent factors, bit for bit.
    got = attrace.read_recording(rec_dir)
    assert len(got["steps"]) == 3, len(got["steps"])
    for c, (ids, rows) in enumerate(expected):
        st = got["steps"][c]
        assert st["step"] == 2 * c and np.array_equal(st["ids"], ids)
        assert np.array_equal(st["rows"], rows), "step %d: max diff %g" % (c, np.abs(st["rows"] - rows).max())
    print("1. Python-recorded rows equal recorded_rows() of independent factors bit for bit (3 steps)")

    # 2. finalize, then the CLI's own featurization of the saved checkpoints.
    out = attrace.finalize(rec_dir, train=train, query=query, store=os.path.join(tmp, "store.h5"))
    binary = os.environ["ATTRACE_BIN"]
    cli_store, q_store = os.path.join(tmp, "cli.h5"), os.path.join(tmp, "q.h5")
    subprocess.run([binary, "featurize", "-q", "-c", out["config"], "-o", cli_store], check=True)
    subprocess.run([binary, "featurize", "-q", "--query", "-c", out["config"], "-o", q_store], check=True)
    worst = 0.0
    for c, (ids, _) in enumerate(expected):
        a, b = store_rows(out["store"], c), store_rows(cli_store, c)
        mask = np.zeros(N, bool)
        mask[ids] = True
        assert not a[~mask].any(), "rows outside step %d's batch must be zero" % c
        rel = np.abs(a[mask] - b[mask]).max(axis=1) / np.abs(b[mask]).max(axis=1)
        worst = max(worst, rel.max())
    print("2. recorded vs `attrace featurize`: largest rowwise max|diff|/max|cli| = %.3g" % worst)
    assert worst < 1e-5, worst

    # 3. score through the binary; scores.h5 = sum over recorded steps of F_c Q_c^T.
    res = os.path.join(tmp, "results")
    attrace.score(out["config"], out["store"], res, binary=binary)
    report = attrace.load_report(res)
    assert len(report["tranches"]) == 2 and report["scores"].shape == (N, 6)
    want = sum(store_rows(out["store"], c) @ store_rows(q_store, c).T for c in range(3))
    err = np.abs(report["scores"] - want).max() / np.abs(want).max()
    print("3. scores.h5 vs sum_c F_c Q_c^T (float64 here): normwise max error %.3g" % err)
    assert err < 1e-6, err
    seen = np.zeros(N, bool)
    for ids, _ in expected:
        seen[ids] = True
    assert not report["scores"][~seen].any(), "examples no recorded step saw must score 0"

    # 4. resume: a new Recorder continues after the last recorded step.
    rec2 = attrace.Recorder(model, store=rec_dir, k=K, seed=SEED, every=2)
    assert rec2.current_step == 5, rec2.current_step
    rec2.close()
    try:
        attrace.Recorder(model, store=rec_dir, k=2 * K, seed=SEED, every=2)
        raise AssertionError("a recording with another k was resumed")
    except ValueError as e:
        assert "projection" in str(e), e
    print("4. resume continues at step 5; other settings refused")
    capture_paths_part(tmp)
    cnn_part(tmp, binary)
    cnn_part(tmp, binary, defer=True)
    lm_part(tmp, binary)
    doc_example_part(tmp)
    print("python recorder test: OK")
    return 0


class HookedLinear(torch.nn.Linear):
    """A Linear subclass with its own forward: recorded by a forward hook, not the C++ forward."""

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight, self.bias)


def capture_paths_part(tmp):
    """The two capture paths record the same bits; attach/detach and copies behave."""
    rng = np.random.default_rng(5)
    x_all = torch.from_numpy(rng.uniform(-1, 1, (N, D)).astype(np.float32))
    y_all = torch.from_numpy(rng.integers(0, C, N))
    batches = [torch.from_numpy(rng.permutation(N)[:B]) for _ in range(4)]
    recorded = []
    for first in (torch.nn.Linear, HookedLinear):
        torch.manual_seed(3)
        model = torch.nn.Sequential(first(D, H), torch.nn.ReLU(), torch.nn.Linear(H, C))
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        rec_dir = os.path.join(tmp, "paths-" + first.__name__)
        rec = attrace.Recorder(model, store=rec_dir, k=K, seed=SEED)
        with rec:
            patched = [type(m).__name__ for m in model if "forward" in m.__dict__]
            assert patched == (["Linear", "Linear"] if first is torch.nn.Linear else ["Linear"]), patched
            for s, ids in enumerate(batches):
                loss = torch.nn.functional.cross_entropy(model(x_all[ids]), y_all[ids])
                opt.zero_grad()
                loss.backward()
                assert rec.step(ids.numpy() if s % 2 else ids.tolist(), 0.3)  # an array or a list, too
                opt.step()
                if s == 1:
                    # A deep copy (an EMA model, say) computes with its own weights and is not recorded.
                    twin = copy.deepcopy(model)
                    with torch.no_grad():
                        for p in twin.parameters():
                            p.mul_(2)
                        assert not torch.equal(twin(x_all[:4]), model(x_all[:4]))
                        plain = torch.nn.Sequential(first(D, H), torch.nn.ReLU(), torch.nn.Linear(H, C))
                        plain.load_state_dict(twin.state_dict())
                        assert torch.equal(twin(x_all[:4]), plain(x_all[:4]))
                    twin(x_all[:4]).sum().backward()  # with grad: no capture, no error
        assert not any("forward" in m.__dict__ for m in model), "detach must restore the layers' forwards"
        assert not model._forward_pre_hooks and not any(m._forward_hooks for m in model)
        recorded.append(attrace.read_recording(rec_dir))
    a, b = recorded
    assert len(a["steps"]) == len(b["steps"]) == 4
    for sa, sb in zip(a["steps"], b["steps"]):
        assert np.array_equal(sa["rows"], sb["rows"]) and np.array_equal(sa["parameters"], sb["parameters"])
    # Misuse is refused by name: step() without a backward, an empty batch.
    model = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, C))
    with attrace.Recorder(model, store=os.path.join(tmp, "paths-misuse"), k=K, seed=SEED) as rec:
        stale = torch.nn.functional.cross_entropy(model(x_all[:B]), y_all[:B])
        try:
            rec.step(list(range(B)), 0.1)
            raise AssertionError("a step without backward was recorded")
        except ValueError as e:
            assert "step 0: no gradient reached layer '0'" in str(e), e
        # The backward of an earlier step's forward does not fill this step's capture.
        model(x_all[:B])
        stale.backward()
        try:
            rec.step(list(range(B)), 0.1)
            raise AssertionError("gradients of an older forward were recorded")
        except ValueError as e:
            assert "step 1: no gradient reached layer '0'" in str(e), e
        torch.nn.functional.cross_entropy(model(x_all[:B]), y_all[:B]).backward()
        try:
            rec.step([], 0.1)
            raise AssertionError("an empty batch was recorded")
        except ValueError as e:
            assert "step 2: ids must not be empty" in str(e), e
        assert rec.recorded == 0
    print("5b. C++ Linear forward and C++ forward hook record the same bits (4 steps); detach restores; "
          "a deep copy is not recorded; a step without backward (or with an older forward's), an empty batch are refused")


def cnn_part(tmp, binary, defer=False):
    torch.manual_seed(3)
    rng = np.random.default_rng(5)
    n, b = 24, 8
    x_all = rng.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)
    y_all = rng.integers(0, C, n)
    train, query = os.path.join(tmp, "img_train.h5"), os.path.join(tmp, "img_query.h5")
    write_dataset(train, x_all, y_all, 2)
    write_dataset(query, rng.uniform(0, 1, (4, 1, 8, 8)).astype(np.float32), rng.integers(0, C, 4), 0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding="same", dilation=2), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 0), bias=False), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(6 * 8 * 4, C))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    xt, yt = torch.from_numpy(x_all), torch.from_numpy(y_all)
    specs = [("0", 1 * 9 + 1, 4, True, {"c_in": 1, "kernel": (3, 3), "stride": (1, 1), "padding": (2, 2), "dilation": (2, 2)}),
             ("2", 4 * 6, 6, False, {"c_in": 4, "kernel": (3, 2), "stride": (1, 2), "padding": (1, 0), "dilation": (1, 1)}),
             ("5", 6 * 8 * 4 + 1, C, True, None)]
    rec_dir = os.path.join(tmp, "rec-cnn-deferred" if defer else "rec-cnn")
    expected = []
    with attrace.Recorder(model, store=rec_dir, k=K, seed=SEED, queue_steps=1, defer=defer) as rec:
        for s in range(3):
            ids = torch.from_numpy(rng.permutation(n)[:b])
            # Independent captures: each conv's NCHW input and d(sum of losses)/d(output).
            h0 = xt[ids]
            z0 = model[0](h0)
            z0.retain_grad()
            h1 = torch.relu(z0)
            z1 = model[2](h1)
            z1.retain_grad()
            h2 = torch.flatten(torch.relu(z1), 1)
            z2 = model[5](h2)
            z2.retain_grad()
            torch.nn.functional.cross_entropy(z2, yt[ids], reduction="sum").backward()
            xs = [h0.detach().numpy(), h1.detach().numpy(), h2.detach().numpy()]
            ds = [z0.grad.numpy().copy(), z1.grad.numpy().copy(), z2.grad.numpy().copy()]
            opt.zero_grad()
            rows = attrace.recorded_rows(specs, K, SEED, "rademacher", "f32", s, 0.3, xs, ds, b, [False] * 3)
            expected.append((ids.numpy().copy(), rows))
            loss = torch.nn.functional.cross_entropy(model(xt[ids]), yt[ids])
            opt.zero_grad()
            loss.backward()
            assert rec.step(ids, 0.3)
            opt.step()
    got = attrace.read_recording(rec_dir)
    for c, (ids, rows) in enumerate(expected):
        st = got["steps"][c]
        assert np.array_equal(st["ids"], ids)
        assert np.array_equal(st["rows"], rows), "cnn step %d: max diff %g" % (c, np.abs(st["rows"] - rows).max())
    tag = "-deferred" if defer else ""
    out = attrace.finalize(rec_dir, train=train, query=query, store=os.path.join(tmp, "cnn-store%s.h5" % tag))
    cli_store = os.path.join(tmp, "cnn-cli%s.h5" % tag)
    subprocess.run([binary, "featurize", "-q", "-c", out["config"], "-o", cli_store], check=True)
    worst = 0.0
    for c, (ids, _) in enumerate(expected):
        a, cli = store_rows(out["store"], c), store_rows(cli_store, c)
        rel = np.abs(a[ids] - cli[ids]).max(axis=1) / np.abs(cli[ids]).max(axis=1)
        worst = max(worst, rel.max())
    print("5. CNN (%s projection): recorded rows equal recorded_rows() of NCHW captures bit for bit; vs `attrace "
          "featurize`: largest rowwise max|diff|/max|cli| = %.3g" % ("deferred" if defer else "live", worst))
    assert worst < 1e-5, worst


V, T, DM = 32, 8, 16


class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(d)
        self.q = torch.nn.Linear(d, d)
        self.k = torch.nn.Linear(d, d)
        self.v = torch.nn.Linear(d, d)
        self.o = torch.nn.Linear(d, d)
        self.ln2 = torch.nn.LayerNorm(d)
        self.fc1 = torch.nn.Linear(d, 2 * d)
        self.fc2 = torch.nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.ln1(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        att = torch.matmul(q, k.transpose(1, 2)) * (1.0 / 4.0)  # 1 / sqrt(16)
        n = x.size(1)
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), 1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        x = x + self.o(torch.matmul(att, v))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, DM)
        self.pos = torch.nn.Parameter(0.1 * torch.randn(T, DM))
        self.block = Block(DM)
        self.ln = torch.nn.LayerNorm(DM)
        self.head = torch.nn.Linear(DM, V)

    def forward(self, ids):
        x = self.emb(ids) + self.pos[: ids.size(1)]
        return self.head(self.ln(self.block(x)))


def lm_part(tmp, binary):
    torch.manual_seed(11)
    rng = np.random.default_rng(12)
    n, b = 24, 8
    x_all, y_all = rng.integers(0, V, (n, T)), rng.integers(0, V, (n, T))
    train, query = os.path.join(tmp, "tok_train.h5"), os.path.join(tmp, "tok_query.h5")
    write_dataset(train, x_all, y_all, 2, prefix="tok")  # integer inputs: a token dataset
    write_dataset(query, rng.integers(0, V, (4, T)), rng.integers(0, V, (4, T)), 0, prefix="tok")
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    xt, yt = torch.from_numpy(x_all), torch.from_numpy(y_all)
    rec_dir = os.path.join(tmp, "rec-lm")
    batches = []
    with attrace.Recorder(model, store=rec_dir, k=K, seed=SEED) as rec:
        names = [name for name, _ in rec.layers]
        assert names == ["block.q", "block.k", "block.v", "block.o", "block.fc1", "block.fc2", "head"], names
        for s in range(3):
            ids = torch.from_numpy(rng.permutation(n)[:b])
            logits = model(xt[ids])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), yt[ids].reshape(-1))  # mean over B x T
            opt.zero_grad()
            loss.backward()
            assert rec.step(ids, 0.2)  # loss_scale B: each example's loss is the mean over its T positions
            opt.step()
            batches.append(ids.numpy().copy())
    out = attrace.finalize(rec_dir, train=train, query=query, store=os.path.join(tmp, "lm-store.h5"), loss="next_token")
    with open(out["config"]) as f:
        cfg = f.read()
    assert '"block.q.weight"' in cfg and '"emb.weight"' not in cfg and '"*"' not in cfg, cfg
    cli_store = os.path.join(tmp, "lm-cli.h5")
    subprocess.run([binary, "featurize", "-q", "-c", out["config"], "-o", cli_store], check=True)
    worst = 0.0
    for c, ids in enumerate(batches):
        a, cli = store_rows(out["store"], c), store_rows(cli_store, c)
        outside = np.setdiff1d(np.arange(n), ids)
        assert not a[outside].any(), "rows outside step %d's batch must be zero" % c
        assert (np.abs(cli[ids]).max(axis=1) > 0).all()
        rel = np.abs(a[ids] - cli[ids]).max(axis=1) / np.abs(cli[ids]).max(axis=1)
        worst = max(worst, rel.max())
    print("7. transformer LM (not a Sequential; 7 Linear layers, %d positions each): recorded vs `attrace featurize` "
          "(graph path): largest rowwise max|diff|/max|cli| = %.3g" % (T, worst))
    assert worst < 1e-4, worst
    results = attrace.score(out["config"], out["store"], os.path.join(tmp, "lm-results"), binary=binary)
    report = attrace.load_report(results)
    assert report["scores"].shape == (n, 4), report["scores"].shape

    # Windows of 2 recorded steps: parameters at each window's first step only, one checkpoint
    # per window (the arithmetic is tested in C++: Recorder.WindowsShareCheckpoints).
    win_dir = os.path.join(tmp, "rec-lm-window")
    with attrace.Recorder(model, store=win_dir, k=K, seed=SEED, window=2) as rec:
        for s in range(3):
            ids = torch.from_numpy(rng.permutation(n)[:b])
            loss = torch.nn.functional.cross_entropy(model(xt[ids]).reshape(-1, V), yt[ids].reshape(-1))
            opt.zero_grad()
            loss.backward()
            rec.step(ids, 0.2)
            opt.step()
    got = attrace.read_recording(win_dir)
    assert [len(st["parameters"]) > 0 for st in got["steps"]] == [True, False, True]
    out = attrace.finalize(win_dir, train=train, query=query, store=os.path.join(tmp, "lm-window.h5"), loss="next_token")
    assert out["steps"] == 3 and out["checkpoints"] == 2, out

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    tw = Twice()
    with attrace.Recorder(tw, store=os.path.join(tmp, "rec-twice"), k=K) as rec:
        tw(torch.rand(2, 4)).sum().backward()
        try:
            rec.step([0, 1], 0.1)
            raise AssertionError("a layer applied twice was recorded")
        except ValueError as e:
            assert "more than once" in str(e), e

    class WithConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x)

    try:
        attrace.Recorder(WithConv(), store=os.path.join(tmp, "rec-conv"), k=K)
        raise AssertionError("a Conv2d outside a Sequential was accepted")
    except ValueError as e:
        assert "Conv2d 'conv'" in str(e), e


def doc_example_part(tmp):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "docs", "recorder.md")) as f:
        doc = f.read()
    section = doc[doc.index("## Python (PyTorch)"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]
    work = os.path.join(tmp, "doc-example")
    os.makedirs(work)
    rng = np.random.default_rng(11)
    n, q = 32, 5
    x_all = rng.uniform(0, 1, (n, 64)).astype(np.float32)
    y_all = rng.integers(0, 10, n)
    write_dataset(os.path.join(work, "train.h5"), x_all, y_all, 2)
    write_dataset(os.path.join(work, "query.h5"), rng.uniform(0, 1, (q, 64)).astype(np.float32), rng.integers(0, 10, q), 0)
    order = rng.permutation(n)
    loader = [(torch.from_numpy(order[b:b + 8]), torch.from_numpy(x_all[order[b:b + 8]]), torch.from_numpy(y_all[order[b:b + 8]]))
              for b in range(0, n, 8)]
    cwd = os.getcwd()
    os.chdir(work)
    try:
        scope = {"loader": loader}
        exec(compile(code, "docs/recorder.md (Python example)", "exec"), scope)
    finally:
        os.chdir(cwd)
    report = scope["report"]
    assert report["scores"].shape == (n, q), report["scores"].shape
    assert np.isfinite(report["scores"]).all() and np.abs(report["scores"]).min() > 0  # every example was in a batch
    assert len(attrace.read_recording(os.path.join(work, "run.rec"))["steps"]) == 4
    print("6. the docs' Python example runs as written: %d x %d scores from 4 recorded steps" % (n, q))


if __name__ == "__main__":
    sys.exit(main())
