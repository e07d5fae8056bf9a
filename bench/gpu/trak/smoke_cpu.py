#!/usr/bin/env python3
"""CPU smoke test of time_fast_jl.py's bench loop (no GPU, no fast_jl build): torch.cuda is
replaced by CPU stand-ins and fast_jl by a stand-in with the same Python API (x @ P, P a seeded
+-1 matrix, inputs rounded to fp16 as fast_jl does). It checks the driver (cell plan, sanity checks,
norm check, time box, table, JSON), not fast_jl's speed or results. Needs a CPU torch:

  /usr/bin/python3 bench/gpu/trak/smoke_cpu.py        # Debian's python3-torch
"""
import json
import os
import sys
import tempfile
import time
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import time_fast_jl  # noqa: E402


def _stand_in_fast_jl(calls):
    """project_rademacher_{8,16,32}(x, k, seed, tiles) -> [B, k] float32, refusing what fast_jl refuses."""
    cache = {}

    def make(rows):
        def project(x, k, seed, tiles):
            calls.append((rows, tuple(x.shape), k, seed, tiles))
            if k % 512:
                raise RuntimeError(f"Invalid Number of JL dimensions it has to be a multiple of 512")
            if x.dtype not in (torch.float32, torch.float16) or x.dim() != 2:
                raise RuntimeError("input must be fp16 or fp32 and 2D")
            key = (x.shape[1], k, seed)
            if key not in cache:
                g = torch.Generator().manual_seed(seed)
                cache[key] = torch.randint(0, 2, (x.shape[1], k), generator=g).float() * 2 - 1
            return x.half().float() @ cache[key]
        return project
    mod = types.ModuleType("fast_jl")
    for v in (8, 16, 32):
        setattr(mod, f"project_rademacher_{v}", make(v))
    return mod


class _Event:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def _on_cpu(fn):
    def wrapped(*a, **kw):
        kw.pop("device", None)
        return fn(*a, **kw)
    return wrapped


def patch(calls):
    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_properties = lambda i: types.SimpleNamespace(name="CPU stand-in", multi_processor_count=4)
    torch.cuda.Event = _Event
    torch.cuda.synchronize = lambda: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.reset_peak_memory_stats = lambda: None
    torch.cuda.max_memory_allocated = lambda: 0
    torch.Generator = _on_cpu(torch.Generator)
    torch.randn = _on_cpu(torch.randn)
    torch.zeros = _on_cpu(torch.zeros)
    sys.modules["fast_jl"] = _stand_in_fast_jl(calls)


def main():
    calls = []
    patch(calls)
    failures = []

    def expect(cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        table = os.path.join(d, "t.txt")
        with open(table, "w") as f:
            f.write("f32/B:8/p:2e4/k:1024               20.0           8.13   2.36\n")
        rc = time_fast_jl.main(["bench", "--json", out, "--batches", "8,40", "--ps", "1000,20000",
                                "--ks", "512,1000,1024", "--dtypes", "f32,f16", "--attrace", table,
                                "--target-s", "0.01", "--max-gb", "0.003"])
        doc = json.load(open(out))
        cells = {c["name"]: c for c in doc["cells"]}
        expect(rc == 0, f"bench exits 0 (got {rc})")
        expect(doc["sanity"]["passed"] and doc["sanity"]["variant32_rows0_7_equal_variant8"], "sanity checks pass")
        expect(len(cells) == 2 * 2 * 2 * 3, f"24 cells planned (got {len(cells)})")
        expect("multiple of 512" in (cells["fast_jl/f32/B:8/p:1e3/k:1e3"]["skip"] or ""), "k=1000 refused")
        expect("--max-gb" in (cells["fast_jl/f32/B:40/p:2e4/k:1024"]["skip"] or ""), "memory cap applied")
        c = cells["fast_jl/f16/B:40/p:1e3/k:1024"]
        expect(c["fn"] == "project_rademacher_32" and c["num_feature_tiles"] == 4, "B=40 -> 32-row variant, tiles = SMs")
        expect(c["check_ok"] and abs(c["norm_ratio"] - 1) < 0.1, f"norm check ({c['norm_ratio']:.3f})")
        expect(cells["fast_jl/f32/B:8/p:2e4/k:1024"].get("attrace_tflops") == 20.0, "attrace column read from table text")
        ran = [c for c in cells.values() if not c["skip"]]
        expect(all(c["reps"] >= 3 and c["tflops"] > 0 for c in ran), f"{len(ran)} cells timed with >= 3 repeats")

        # A deadline already near: every cell is skipped by the time box, none is started.
        calls.clear()
        rc = time_fast_jl.main(["bench", "--json", out, "--batches", "8", "--ps", "1000", "--ks", "512",
                                "--deadline", str(time.time() + 2), "--margin-s", "5"])
        doc = json.load(open(out))
        expect(all("time box" in (c["skip"] or "") for c in doc["cells"]), "time box skips cells past the deadline")
        expect(all(x[1] != (8, 1000) for x in calls), "no timed call after the deadline")

    for bad in (["bench", "--dtypes", "bf16"], ["bench", "--tiles", "x"], ["bench", "--ps", "1e5,abc"],
                ["bench", "--min-reps", "0"]):
        try:
            time_fast_jl.main(bad)
            expect(False, f"{bad} refused")
        except SystemExit as e:
            expect(e.code == 2, f"{' '.join(bad[1:])} refused with a usage error")
    print("smoke test " + ("FAILED: " + "; ".join(failures) if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
