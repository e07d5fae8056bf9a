"""The two benchmark models (issue 10) and the checkpoint/run-file helpers shared by the data
builder, the float64 reference and the Captum runner. Run with Debian's /usr/bin/python3."""
import os
import re

import torch
from torch import nn


def make_mlp():
    """MLP 64-512-512-10 on flattened 8x8 digits (301,066 parameters)."""
    return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def make_cnn():
    """Small CNN on 1x8x8 digits: two 3x3 convolutions (same padding), then one linear layer."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 10))


MODELS = {"mlp": make_mlp, "cnn": make_cnn}


def input_shape(name):
    """Per-example input shape of a model: the datasets store inputs in exactly this shape."""
    return (64,) if name == "mlp" else (1, 8, 8)


def read_run(model_dir):
    """[(checkpoint path, lr)] in run order, from MODEL_DIR/run.toml (the format this benchmark writes:
    one [[checkpoint]] table per checkpoint with file, step and lr)."""
    text = open(os.path.join(model_dir, "run.toml")).read()
    files = re.findall(r'^file\s*=\s*"([^"]+)"', text, re.M)
    lrs = [float(v) for v in re.findall(r'^lr\s*=\s*([0-9.eE+-]+)', text, re.M)]
    if not files or len(files) != len(lrs):
        raise SystemExit(f"{model_dir}/run.toml: expected [[checkpoint]] tables with file and lr")
    return [(os.path.join(model_dir, f), lr) for f, lr in zip(files, lrs)]


def load_state(path):
    """Parameters of a TorchScript checkpoint as a plain state dict (keys "0.weight", ... match the
    nn.Sequential above), so eager Python code (hooks, float64) sees exactly the saved weights."""
    return {k: v.detach().clone() for k, v in torch.jit.load(path, map_location="cpu").state_dict().items()}
