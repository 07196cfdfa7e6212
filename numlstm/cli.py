"""The `numlstm` command.

    numlstm demo     build a stacked bidirectional LSTM, run a training forward and
                     backward on random data, check the CPU kernels against the NumPy
                     reference, and print what happened and how long it took
    numlstm bench    numlstm's CPU LSTM against torch.nn.LSTM, side by side
                     (--quick: a CI-sized grid; --full: the asv grid)
"""
import argparse
import sys
import time

import numpy as np


def _demo(args):
    import numlstm

    rng = np.random.default_rng(args.seed)
    T, B, I, H = args.steps, args.batch, args.input_size, args.hidden_size
    lstm = numlstm.LSTM(I, H, num_layers=2, bidirectional=True, seed=args.seed)
    print(f"numlstm {numlstm.__version__}: {lstm}")
    n_params = sum(p.size for p in lstm.params.values())
    print(f"parameters: {n_params} in {len(lstm.params)} arrays "
          f"(weight_ih_l0 {lstm.params['weight_ih_l0'].shape}, ...)")
    x = rng.standard_normal((T, B, I)).astype(np.float32)

    t0 = time.perf_counter()
    y, (h_n, c_n) = lstm(x, training=True)
    t1 = time.perf_counter()
    dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
    t2 = time.perf_counter()
    print(f"forward  x {x.shape} -> y {y.shape}, h_n {h_n.shape}, c_n {c_n.shape} "
          f"in {1e3 * (t1 - t0):.1f} ms (first call includes compiling or loading kernels)")
    print(f"backward dy {y.shape} -> dx {dx.shape}, dh0 {dh0.shape}, "
          f"grad norm {np.sqrt(sum((g ** 2).sum() for g in lstm.grads.values())):.4f} "
          f"in {1e3 * (t2 - t1):.1f} ms")

    t0 = time.perf_counter()
    for _ in range(args.repeat):
        lstm(x)
    dt = (time.perf_counter() - t0) / args.repeat
    print(f"inference: {dt * 1e3:.2f} ms per call, {T * B / dt:,.0f} tokens/s")

    ref = numlstm.LSTM(I, H, num_layers=2, bidirectional=True, backend="numpy",
                       dtype=np.float64)
    ref.load_weights(lstm.state_dict())
    y_ref, _ = ref(x.astype(np.float64))
    err = np.abs(y - y_ref).max() / np.abs(y_ref).max()
    print(f"CPU kernels against the float64 NumPy reference: max relative error {err:.1e}")
    return 0 if err < 1e-5 else 1


def _bench(args):
    import json

    from . import bench

    if args.memory:
        m = bench.training_memory(*args.memory)
        mib = 1 / 2 ** 20
        print(f"training forward T={m['T']} B={m['B']} H={m['H']}: the cache must hold "
              f"gates, c and h of each step = {m['expected'] * mib:.1f} MiB; held after "
              f"the call: {m['retained'] * mib:.1f} MiB; peak during the call (output "
              f"included): {m['peak'] * mib:.1f} MiB")
        return 0
    if args.shapes:
        grid = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    else:
        grid = bench.QUICK_GRID if args.quick else (
            bench.FULL_GRID if args.full else bench.DEFAULT_GRID)
    rows = bench.compare(grid, repeats=args.repeats, with_torch=not args.no_torch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="numlstm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a layer forward and backward and print it")
    demo.add_argument("--steps", type=int, default=50)
    demo.add_argument("--batch", type=int, default=16)
    demo.add_argument("--input-size", type=int, default=32)
    demo.add_argument("--hidden-size", type=int, default=64)
    demo.add_argument("--repeat", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    bench = sub.add_parser("bench", help="compare the CPU LSTM with torch.nn.LSTM")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a small grid, for CI")
    size.add_argument("--full", action="store_true",
                      help="T in 16,128,1024 x H in 64,256,1024 x B in 1,16,128 (slow)")
    size.add_argument("--shapes", nargs="+", metavar="T,B,H", help="shapes to run")
    size.add_argument("--memory", nargs=3, type=int, metavar=("T", "B", "H"),
                      help="report the training cache's memory at one shape "
                           "(the issue's: 1024 64 256)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--no-torch", action="store_true")
    bench.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    bench.set_defaults(run=_bench)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
