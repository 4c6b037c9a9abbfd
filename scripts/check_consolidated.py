#!/usr/bin/python3
"""Checks a consolidated model file against PyTorch: loads MODEL.safetensors with a plain reader (json + numpy,
no safetensors package) into the op-by-op Hugging Face GPT-2 of scripts/gen_fixtures.py, runs the tokens of
EXPECTED.safetensors ("tokens" I32 [B, T]) and compares with its "logits" (F32 [B, T, V], computed by dspeed).
Usage: /usr/bin/python3 scripts/check_consolidated.py MODEL.safetensors EXPECTED.safetensors N_LAYER N_HEAD [TOL]
Exit 0: match; 1: mismatch or a bad file; 77: PyTorch is not installed (the caller skips)."""
import importlib.util
import json
import os
import struct
import sys

try:
    import numpy as np
    import torch
except ImportError:
    print('check_consolidated: PyTorch/numpy not installed; skipping')
    sys.exit(77)

DTYPES = {'F32': '<f4', 'F16': '<f2', 'I32': '<i4', 'I64': '<i8', 'BF16': '<u2'}


def read_safetensors(path):
    with open(path, 'rb') as f:
        blob = f.read()
    (n,) = struct.unpack('<Q', blob[:8])
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        a, b = info['data_offsets']
        raw = np.frombuffer(blob[8 + n + a:8 + n + b], dtype=DTYPES[info['dtype']])
        if info['dtype'] == 'BF16':
            raw = (raw.astype('<u4') << 16).view('<f4')
        out[name] = raw.reshape(info['shape'])
    return out


def main():
    model_path, expected_path, n_layer, n_head = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tol = float(sys.argv[5]) if len(sys.argv) > 5 else 1e-4
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location('gen_fixtures', os.path.join(here, 'gen_fixtures.py'))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    params = {k: torch.from_numpy(v.astype(np.float64)) for k, v in read_safetensors(model_path).items()}
    expected = read_safetensors(expected_path)
    idx = torch.from_numpy(expected['tokens'].astype(np.int64))
    logits, _ = gen.hf_forward(params, idx, idx, n_layer, n_head)
    ours = torch.from_numpy(expected['logits'].astype(np.float64))
    err = (logits - ours).abs().max().item()
    scale = logits.abs().max().item()
    print(f'check_consolidated: max |torch - dspeed| = {err:.3e} (logits up to {scale:.3f}, tolerance {tol})')
    sys.exit(0 if err <= tol * max(1.0, scale) else 1)


if __name__ == '__main__':
    main()
