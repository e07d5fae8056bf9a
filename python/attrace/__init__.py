"""attrace for PyTorch: record projected per-example gradients while a model trains.

    rec = attrace.Recorder(model, store="run.rec", k=4096, seed=0, every=1)
    with rec:
        for ids, x, y in loader:                     # ids: the examples' rows in train.h5
            loss = F.cross_entropy(model(x), y)      # your loss (a batch mean), unchanged
            opt.zero_grad(); loss.backward()
            rec.step(ids, lr=opt.param_groups[0]["lr"])   # before opt.step()
            opt.step()
    out = attrace.finalize("run.rec", train="train.h5", query="query.h5", store="train-features.h5")
    attrace.score(out["config"], out["store"], "results")
    report = attrace.load_report("results")

Semantics, layout and guarantees: docs/recorder.md. The C++ part (_attrace) does the projection
(the CLI's Kronecker projection, bit for bit on the same captured tensors) and the durable writes.
"""
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import torch

from . import _attrace
from ._attrace import InputError, read_recording, recorded_rows  # noqa: F401

__all__ = ["Recorder", "finalize", "score", "attribute", "load_report", "read_recording", "recorded_rows", "InputError"]


def _chain(model):
    """(name, module) of the chain's children, nested Sequentials flattened as the CLI does."""
    if not isinstance(model, torch.nn.Sequential):
        raise InputError("attrace.Recorder: the model is a %s, not an nn.Sequential" % type(model).__name__)
    out = []

    def walk(m, prefix):
        for name, child in m.named_children():
            if isinstance(child, torch.nn.Sequential):
                walk(child, prefix + name + ".")
            else:
                out.append((prefix + name, child))

    walk(model, "")
    return out


class Recorder:
    """Records a training run of an nn.Sequential whose layers with parameters are nn.Linear.

    Forward hooks keep each Linear layer's input and a tensor hook its output gradient, only in
    steps that are recorded; step(ids, lr) (after backward, before the optimizer step) hands them
    to the C++ writer. `store` is the recording directory; finalize() turns it into a feature
    store. every / steps choose the recorded steps; loss_scale in step() undoes a mean loss.
    """

    def __init__(self, model, store, k=4096, seed=0, every=1, steps=None, distribution="rademacher", dtype="f32",
                 flush_steps=64, threads=1):
        self.model = model
        self.layers = []  # (name, module)
        specs = []
        for name, child in _chain(model):
            params = list(child.parameters(recurse=True))
            if not params:
                continue
            if not isinstance(child, torch.nn.Linear):
                raise InputError("attrace.Recorder: child '%s' (%s) has parameters and is not nn.Linear"
                                 % (name, type(child).__name__))
            bias = child.bias is not None
            self.layers.append((name, child))
            specs.append((name, child.in_features + (1 if bias else 0), child.out_features, bias))
        self.params = [(n, p) for n, p in model.named_parameters()]
        for n, p in self.params:
            if p.dtype != torch.float32:
                raise InputError("attrace.Recorder: parameter '%s' is %s, not float32" % (n, p.dtype))
        # The template: the scripted model (it shares the parameters); finalize rebuilds each
        # recorded step's checkpoint from it.
        fd, tmpl = tempfile.mkstemp(suffix=".pt", prefix="attrace-template-")
        os.close(fd)
        try:
            torch.jit.script(model).save(tmpl)
            self._writer = _attrace.RecordingWriter(
                str(store), specs, [(n, list(p.shape)) for n, p in self.params], tmpl, k=k, seed=seed,
                distribution=distribution, dtype=dtype, every=every, steps=list(steps or []), flush_steps=flush_steps,
                threads=threads)
        finally:
            os.remove(tmpl)
        self.store = str(store)
        self.current_step = self._writer.last_step + 1
        self._handles = []
        self._capturing = False
        self._x = [None] * len(self.layers)
        self._g = [None] * len(self.layers)
        self.seconds_capture = 0.0

    # -- hooks ------------------------------------------------------------------------------
    def _forward_hook(self, index):
        def hook(module, inputs, output):
            if not self._capturing:
                return
            self._x[index] = inputs[0].detach()
            if output.requires_grad:
                def keep(g):
                    self._g[index] = g.detach()
                output.register_hook(keep)
        return hook

    def _pre_hook(self, module, inputs):
        # Decided once per forward: capture only when the coming step is recorded.
        self._capturing = torch.is_grad_enabled() and self._writer.wants(self.current_step)
        if self._capturing:
            self._x = [None] * len(self.layers)
            self._g = [None] * len(self.layers)

    def attach(self):
        """Registers the hooks (done by `with recorder:`)."""
        if self._handles:
            return self
        self._handles.append(self.model.register_forward_pre_hook(self._pre_hook))
        for i, (_, mod) in enumerate(self.layers):
            self._handles.append(mod.register_forward_hook(self._forward_hook(i)))
        return self

    def detach(self):
        """Removes the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()
        self.close()
        return False

    # -- steps ------------------------------------------------------------------------------
    def step(self, ids, lr, loss_scale=None):
        """Ends training step `current_step`; records it when scheduled. ids: the batch's rows in
        the training dataset, in batch order. loss_scale: the factor from the captured gradient
        to each example's own loss gradient (default: the batch size, for a mean loss; 1 for a
        summed loss). Returns whether the step was recorded."""
        t = self.current_step
        self.current_step += 1
        if not self._capturing:
            return False
        self._capturing = False
        ids = np.ascontiguousarray(torch.as_tensor(ids).cpu().numpy(), dtype=np.int64).reshape(-1)
        batch = ids.shape[0]
        scale = np.float32(batch if loss_scale is None else loss_scale)
        xs, ds, pos = [], [], []
        for i, (name, mod) in enumerate(self.layers):
            x, g = self._x[i], self._g[i]
            if x is None or g is None:
                raise InputError("attrace.Recorder: step %d: no gradient reached layer '%s' (call step() after "
                                 "loss.backward() of this step's forward)" % (t, name))
            x = x.to(torch.float32).reshape(-1, mod.in_features).cpu().numpy()
            rows = x.shape[0]
            if rows % batch:
                raise InputError("attrace.Recorder: step %d: %d ids for %d rows of layer '%s'" % (t, batch, rows, name))
            if mod.bias is not None:
                x = np.concatenate([x, np.ones((rows, 1), np.float32)], axis=1)
            # The batch-mean loss scaled each example's gradient by 1/B; undone by the same factor.
            d = g.to(torch.float32).reshape(-1, mod.out_features).cpu().numpy() * scale
            xs.append(np.ascontiguousarray(x))
            ds.append(np.ascontiguousarray(d, dtype=np.float32))
            pos.append(rows // batch)
        params = [p.detach().reshape(-1).cpu().numpy() for _, p in self.params]
        self._writer.record(t, float(lr), ids, xs, ds, pos, params)
        self._x = [None] * len(self.layers)
        self._g = [None] * len(self.layers)
        return True

    def flush(self):
        """Makes every recorded step durable."""
        self._writer.flush()

    def close(self):
        """Flushes and releases the recording."""
        self._writer.close()

    @property
    def recorded(self):
        """Steps recorded so far (durable and pending)."""
        return self._writer.recorded

    @property
    def timings(self):
        """Seconds spent in projection and in writing (C++ side)."""
        return self._writer.timings


def finalize(recording, train, query, store, loss="cross_entropy", replace=False):
    """Checkpoints, run.toml, attrace.toml and a feature store (train rows) from a recording.
    Returns a dict with the config and store paths for score()."""
    return _attrace.finalize(str(recording), str(train), str(query), str(store), loss, replace)


def _binary(binary):
    b = binary or os.environ.get("ATTRACE_BIN") or shutil.which("attrace")
    if not b:
        raise FileNotFoundError("the attrace binary was not found: pass binary= or set ATTRACE_BIN")
    return b


def score(config, store, out, binary=None, force=False, quiet=True):
    """Runs `attrace score -c CONFIG --store STORE -o OUT` (the built binary; ATTRACE_BIN or PATH)."""
    cmd = [_binary(binary), "score", "-c", str(config), "--store", str(store), "-o", str(out)]
    if force:
        cmd.append("--force")
    if quiet:
        cmd.append("--quiet")
    subprocess.run(cmd, check=True)
    return str(out)


def attribute(config, out, binary=None, force=False, quiet=True):
    """Runs `attrace attribute -c CONFIG -o OUT`."""
    cmd = [_binary(binary), "attribute", "-c", str(config), "-o", str(out)]
    if force:
        cmd.append("--force")
    if quiet:
        cmd.append("--quiet")
    subprocess.run(cmd, check=True)
    return str(out)


def load_report(path):
    """report.json of an output directory as a dict; with scores.h5 present (and h5py), adds
    'scores' (train x query), 'self_influence', 'train_ids' and 'query_ids' as arrays."""
    path = str(path)
    with open(os.path.join(path, "report.json")) as f:
        report = json.load(f)
    h5 = os.path.join(path, "scores.h5")
    if os.path.exists(h5):
        import h5py
        with h5py.File(h5, "r") as f:
            for key in f.keys():
                v = f[key][()]
                if v.dtype.kind in "OS":
                    v = np.array([s.decode() if isinstance(s, bytes) else s for s in v])
                report[key] = v
    return report
