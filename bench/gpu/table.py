#!/usr/bin/env python3
"""Side-by-side table from bench_gpu's JSON: on-the-fly projection vs the same-shape cuBLAS GEMM
with P stored and vs a device-to-device copy of the input; Kronecker layer projection vs the
layer's backward pass. Usage: table.py bench_gpu.json"""
import json
import sys


def main(path):
    doc = json.load(open(path))
    ctx = doc.get("context", {})
    print(f"device: {ctx.get('gpu', '?')} ({ctx.get('gpu_sms', '?')} SMs), date {ctx.get('date', '?')}")
    rows = {}
    for b in doc["benchmarks"]:
        kind, rest = b["name"].split("/", 1)
        rest = rest.split("/manual_time")[0].split("/iterations")[0]
        rows.setdefault(kind, {})[rest] = b

    def val(b, key):
        if b is None:
            return "-"
        if b.get("error_occurred"):
            return "skip"
        return f"{b[key]:.3g}" if key in b else "-"

    print(f"\n{'projection cell':34} {'proj TFLOP/s':>12} {'cuBLAS TFLOP/s':>14} {'ratio':>6} "
          f"{'proj in GB/s':>12} {'copy GB/s':>10}")
    for cell, b in rows.get("project", {}).items():
        g = rows.get("gemm", {}).get(cell)
        shape = cell.rsplit("/k:", 1)[0]
        c = rows.get("copy", {}).get(shape)
        ratio = "-"
        if b and g and not b.get("error_occurred") and not g.get("error_occurred"):
            ratio = f"{b['TFLOP/s'] / g['TFLOP/s']:.2f}"
        print(f"{cell:34} {val(b, 'TFLOP/s'):>12} {val(g, 'TFLOP/s'):>14} {ratio:>6} {val(b, 'GB/s'):>12} {val(c, 'GB/s'):>10}")
        for x in (b, g):
            if x and x.get("error_occurred"):
                print(f"{'':4}{x['name'].split('/manual_time')[0]}: {x.get('error_message', '')}")

    print(f"\n{'linear layer':44} {'kron ms':>9} {'backward ms':>12} {'kron/backward':>14}")
    for cell, k in rows.get("kron", {}).items():
        bw = rows.get("backward", {}).get(cell)

        def ms(b):
            if b is None or b.get("error_occurred"):
                return None
            return b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
        a, c = ms(k), ms(bw)
        ratio = f"{a / c:.3f}" if a is not None and c else "-"
        label = k.get("label", "")
        print(f"{cell + ' ' + label:44} {a if a is None else round(a, 3)!s:>9} {c if c is None else round(c, 3)!s:>12} {ratio:>14}")

    print(f"\n{'scoring cell':34} {'fma TFLOP/s':>11} {'canonical':>10} {'cuBLAS sgemm':>13} {'fma/sgemm':>10}")
    for cell, f in rows.get("score_fma", {}).items():
        c = rows.get("score_canonical", {}).get(cell)
        g = rows.get("score_sgemm", {}).get(cell)
        ratio = "-"
        if f and g and not f.get("error_occurred") and not g.get("error_occurred"):
            ratio = f"{f['TFLOP/s'] / g['TFLOP/s']:.2f}"
        print(f"{cell:34} {val(f, 'TFLOP/s'):>11} {val(c, 'TFLOP/s'):>10} {val(g, 'TFLOP/s'):>13} {ratio:>10}")


if __name__ == "__main__":
    main(sys.argv[1])
