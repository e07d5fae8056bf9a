#!/usr/bin/python3
"""Captum's TracInCP on one benchmark model, as the peer of `attrace attribute`: the same
checkpoints (their parameters loaded into the eager model), the same lr weights, the same
per-example cross-entropy, every parameter, no projection, the full train x query score matrix.
Captum comes from its source tree on PYTHONPATH (run.sh sets it from CAPTUM_SRC); it is a benchmark
peer, not a dependency of attrace.

Scale: with loss_fn = CrossEntropyLoss(reduction="sum") and sample_wise_grads_per_batch=True,
Captum's per-example "jacobians" are the gradients of each example's own loss, and
TracInCP.influence returns sum_c lr_c <g_c(query), g_c(train)>, lr_c being what the checkpoint
loader returns: attrace's score, transposed.

Writes MODEL_DIR/captum/scores.h5 (/scores float64 [n_train, n_query]) and timing.json.
Usage: captum_tracin.py MODEL_DIR MODEL OUT_DIR [TRAIN_BATCH]"""
import json
import os
import sys
import time

t_start = time.time()

import h5py  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import captum  # noqa: E402
from captum.influence import TracInCP  # noqa: E402

from models import MODELS, load_state, read_run  # noqa: E402


def set_threads():
    """Every core unless THREADS says otherwise: this torch build defaults to one thread here, and
    the peers must get the same cores (run.sh passes the same count to attrace)."""
    torch.set_num_threads(int(os.environ.get("THREADS") or os.cpu_count()))


def main(model_dir, name, out_dir, train_batch):
    set_threads()
    with h5py.File(f"{model_dir}/train.h5", "r") as f:
        xt, yt = torch.from_numpy(f["inputs"][:]), torch.from_numpy(f["targets"][:])
    with h5py.File(f"{model_dir}/query.h5", "r") as f:
        xq, yq = torch.from_numpy(f["inputs"][:]), torch.from_numpy(f["targets"][:])
    run = read_run(model_dir)
    # Captum reloads a checkpoint for every training batch; serving the parameters from memory keeps
    # file reads out of its time (it is charged for the one read per checkpoint here).
    states = {path: (load_state(path), lr) for path, lr in run}

    def load_checkpoint(model, path):
        state, lr = states[path]
        model.load_state_dict(state)
        return lr

    model = MODELS[name]().eval()
    tracin = TracInCP(model, TensorDataset(xt, yt), [p for p, _ in run], checkpoints_load_func=load_checkpoint,
                      loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=train_batch,
                      sample_wise_grads_per_batch=True)
    t0 = time.time()
    scores = tracin.influence((xq, yq))          # [n_query, n_train]
    t_influence = time.time() - t0
    if tuple(scores.shape) != (len(xq), len(xt)):
        raise SystemExit(f"captum_tracin.py: influence() returned {tuple(scores.shape)}, "
                         f"expected {(len(xq), len(xt))}")
    os.makedirs(out_dir, exist_ok=True)
    with h5py.File(f"{out_dir}/scores.h5", "w") as f:
        f["scores"] = scores.T.double().numpy()
    timing = {"influence_s": t_influence, "process_to_scores_s": time.time() - t_start,
              "train_batch": train_batch, "captum_version": captum.__version__, "captum_file": captum.__file__,
              "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}
    with open(f"{out_dir}/timing.json", "w") as f:
        json.dump(timing, f, indent=1)
    print(f"  captum {name}: TracInCP.influence {t_influence:.1f} s (train batch {train_batch}, "
          f"captum {captum.__version__}, {torch.get_num_threads()} torch threads)")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) == 5 else 128)
