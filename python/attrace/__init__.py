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
(the CLI's Kronecker projection, bit for bit on the same captured tensors) and the durable writes,
on a background thread: step() only copies the captured tensors into its queue.
"""
import json
import os
import shutil
import subprocess
import tempfile
import types

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


def _linear_layers(model):
    """(name, module) of every trainable nn.Linear of a model that is not an nn.Sequential, in the
    order of their weights in named_parameters() (the order the CLI's graph path lays them out),
    named by module path as the graph path names them. Such a model is featurized by its forward
    graph, which captures Linear layers (and Embedding / LayerNorm ones, which are not recorded
    here and are left out of the finalized config's gradients.parameters)."""
    order = {id(p): i for i, (_, p) in enumerate(model.named_parameters())}
    out, seen = [], {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            raise InputError("attrace.Recorder: Conv2d '%s' in a %s: convolutions are recorded in an nn.Sequential only "
                             "(the CLI featurizes other models by their forward graph, which captures Linear, Embedding "
                             "and LayerNorm layers)" % (name, type(model).__name__))
        if isinstance(m, torch.nn.Linear) and m.weight.requires_grad:
            if id(m.weight) in seen:
                raise InputError("attrace.Recorder: Linear '%s' shares its weight with '%s' (tied weights are not recorded)"
                                 % (name, seen[id(m.weight)]))
            seen[id(m.weight)] = name
            out.append((name, m))
    out.sort(key=lambda nm: order[id(nm[1].weight)])
    if not out:
        raise InputError("attrace.Recorder: the %s has no trainable nn.Linear layer to record" % type(model).__name__)
    return out


def _conv_geometry(name, conv):
    """The geometry dict of an nn.Conv2d (groups 1, zero padding), as the CLI's chain path reads it."""
    if conv.groups != 1:
        raise InputError("attrace.Recorder: Conv2d '%s' has groups = %d (only 1 is recorded)" % (name, conv.groups))
    if conv.padding_mode != "zeros":
        raise InputError("attrace.Recorder: Conv2d '%s' pads with '%s' (only zeros is recorded)" % (name, conv.padding_mode))
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            padding = (0, 0)
        elif conv.padding == "same" and dh * (kh - 1) % 2 == 0 and dw * (kw - 1) % 2 == 0:
            padding = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
        else:
            raise InputError("attrace.Recorder: Conv2d '%s' has padding '%s' with an odd total (asymmetric)"
                             % (name, conv.padding))
    else:
        padding = tuple(conv.padding)
    return {"c_in": conv.in_channels, "kernel": (kh, kw), "stride": tuple(conv.stride), "padding": padding,
            "dilation": (dh, dw)}


class Recorder:
    """Records a training run of an nn.Sequential whose layers with parameters are nn.Linear or
    nn.Conv2d (groups 1, zero padding), or of any other scriptable nn.Module: then its trainable
    nn.Linear layers, wherever they are and whatever the input's shape ([B, d], or [B, T, d]: T
    positions per example), and the finalized config selects their parameters only (a
    transformer's embeddings and LayerNorms are not recorded).

    The capture is C++ (attach()): each recorded layer keeps its input and an autograd hook its
    output gradient, only in steps that are recorded; step(ids, lr) (after backward, before the
    optimizer step) copies them into the C++ writer's queue, whose background thread projects and
    writes them. While attached, a recorded nn.Linear's `forward` is an instance attribute (C++):
    script or pickle the whole model before attaching or after detaching (state_dict() and
    copy.deepcopy work; a copy is not recorded). `store` is the
    recording directory; finalize() turns it into a feature store. every / steps choose the
    recorded steps; loss_scale in step() undoes a mean loss. projection="none" records exact
    per-example gradients (Linear layers with one position per example; `factored` as the
    config's features.factored) instead of the Kronecker projection with budget k. defer: where
    a step's projection runs: True stores the captured tensors and finalize() projects them (the
    same features bit for bit, no projection beside training, more bytes per step), False
    projects on the writer's thread, "auto" (default) defers a step when its captured tensors
    take at most twice the floats of its projected blocks (docs/recorder.md). window=W > 1: W
    consecutive recorded steps share one checkpoint (parameters saved at its first step; query
    gradients taken there), W times fewer parameter copies and store blocks (docs/recorder.md).
    """

    def __init__(self, model, store, k=4096, seed=0, every=1, steps=None, distribution="rademacher", dtype="f32",
                 flush_steps=64, threads=1, queue_steps=0, projection="kronecker", factored="auto", defer="auto", window=1):
        self.model = model
        self.layers = []  # (name, module)
        specs = []
        self.sequential = isinstance(model, torch.nn.Sequential)
        for name, child in (_chain(model) if self.sequential else _linear_layers(model)):
            params = list(child.parameters(recurse=True))
            if not params:
                continue
            bias = getattr(child, "bias", None) is not None
            if isinstance(child, torch.nn.Linear):
                specs.append((name, child.in_features + (1 if bias else 0), child.out_features, bias, None))
            elif isinstance(child, torch.nn.Conv2d):
                geometry = _conv_geometry(name, child)
                kh, kw = geometry["kernel"]
                specs.append((name, child.in_channels * kh * kw + (1 if bias else 0), child.out_channels, bias, geometry))
            else:
                raise InputError("attrace.Recorder: child '%s' (%s) has parameters and is not nn.Linear or nn.Conv2d"
                                 % (name, type(child).__name__))
            self.layers.append((name, child))
        self.params = [(n, p) for n, p in model.named_parameters()]
        for n, p in self.params:
            if p.dtype != torch.float32:
                raise InputError("attrace.Recorder: parameter '%s' is %s, not float32" % (n, p.dtype))
        # The template: the scripted model (it shares the parameters); finalize rebuilds each
        # recorded step's checkpoint from it.
        fd, tmpl = tempfile.mkstemp(suffix=".pt", prefix="attrace-template-")
        os.close(fd)
        try:
            try:
                scripted = torch.jit.script(model)
            except Exception as e:  # torch raises several kinds; the first line names the construct
                raise InputError("attrace.Recorder: torch.jit.script(model) failed (the recording's checkpoints are "
                                 "TorchScript): %s" % str(e).strip().splitlines()[0]) from e
            scripted.eval()  # the checkpoints the CLI reads: evaluation mode (Dropout off, BatchNorm's running stats)
            scripted.save(tmpl)
            self._writer = _attrace.RecordingWriter(
                str(store), specs, [(n, list(p.shape)) for n, p in self.params], tmpl, k=k, seed=seed,
                distribution=distribution, dtype=dtype, every=every, steps=list(steps or []), flush_steps=flush_steps,
                threads=threads, queue_steps=queue_steps, projection=projection, factored=factored,
                defer={True: "always", False: "never"}.get(defer, defer) if isinstance(defer, bool) else str(defer),
                window=window)
        finally:
            os.remove(tmpl)
        self.store = str(store)
        self._writer.bind(model, [mod for _, mod in self.layers], [p for _, p in self.params])
        self._handles = []
        self._patched = []  # modules whose forward the recorder replaced

    def attach(self):
        """Installs the capture (done by `with recorder:`): the model's forward pre-hook, and per
        recorded layer either its forward (a module whose class forward is nn.Linear's: the same
        ATen call in C++, with the capture) or a forward hook (Conv2d, a Linear subclass). All of
        them and the output-gradient hooks they add are C++: no Python code runs per layer."""
        if self._handles:
            return self
        self._handles.append(self.model.register_forward_pre_hook(self._writer.pre_hook()))
        for i, (_, mod) in enumerate(self.layers):
            if type(mod).forward is torch.nn.Linear.forward and "forward" not in mod.__dict__:
                mod.forward = types.MethodType(self._writer.linear_forward(i), mod)
                self._patched.append(mod)
            else:
                self._handles.append(mod.register_forward_hook(self._writer.forward_hook(i)))
        return self

    def detach(self):
        """Removes the capture (the layers' own forwards are back)."""
        for h in self._handles:
            h.remove()
        for mod in self._patched:
            del mod.forward
        self._handles = []
        self._patched = []

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()
        self.close()
        return False

    @property
    def current_step(self):
        """The training step the next step() ends (after a resumed recording's last step)."""
        return self._writer.current_step

    @current_step.setter
    def current_step(self, step):
        self._writer.current_step = int(step)

    # -- steps ------------------------------------------------------------------------------
    def step(self, ids, lr, loss_scale=None):
        """Ends training step `current_step`; records it when scheduled. ids: the batch's rows in
        the training dataset, in batch order (a tensor, an array or a list). loss_scale: the
        factor from the captured gradient to each example's own loss gradient (default: the batch
        size, for a mean loss; 1 for a summed loss). Returns whether the step was recorded. The
        captured tensors are copied before it returns; projection and writing run on the
        writer's thread."""
        return self._writer.step(ids, float(lr), loss_scale)

    def flush(self):
        """Makes every recorded step durable (waits for the writer's queue)."""
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
        """Seconds spent (C++ side): capture (copying into the queue) and wait (blocked on a full
        queue or a flush) on the training thread; project and write on the writer's thread."""
        return self._writer.timings


def finalize(recording, train, query, store, loss="cross_entropy", replace=False, recorded_train="", config=""):
    """Checkpoints, run.toml, attrace.toml and a feature store (train rows) from a recording.
    recorded_train: the dataset whose rows the recorded ids are, when `train` is another one
    (matched by example id). config: a config to use instead of writing attrace.toml. Returns a
    dict with the config and store paths for score()."""
    return _attrace.finalize(str(recording), str(train), str(query), str(store), loss, replace, str(recorded_train),
                             str(config))


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
