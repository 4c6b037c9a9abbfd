#!/usr/bin/python3
"""torch.optim.AdamW on the CPU: the reference for `dspeed bench offload`'s CPU Adam.

One fp32 parameter of --numel elements with an fp32 gradient (as DeepSpeed's CPU offload keeps them),
AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), timed per optimizer.step() after --warmup
steps; the median over --steps is printed as `RESULT {"ms": ..., "foreach": ...}`. With --foreach the
multi-tensor implementation is asked for (torch 1.13's default on the CPU is the single-tensor loop).
"""
import argparse, json, statistics, time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--numel', type=int, default=1 << 25)
    p.add_argument('--steps', type=int, default=7)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--foreach', action='store_true')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(a.numel, generator=g))
    param.grad = torch.randn(a.numel, generator=g) * 1e-2
    opt = torch.optim.AdamW([param], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                            foreach=True if a.foreach else None)
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.step()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
    print('RESULT ' + json.dumps({'ms': 1e3 * statistics.median(times), 'foreach': a.foreach,
                                  'torch': torch.__version__}))


if __name__ == '__main__':
    main()
