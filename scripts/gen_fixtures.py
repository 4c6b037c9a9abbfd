#!/usr/bin/python3
"""Generates the committed test fixtures in tests/fixtures/ (see tests/fixtures/README.md).

Safetensors files are written by hand (json + struct + numpy) because the `safetensors` package is not installed;
the small fixture deliberately uses a layout our C++ writer never produces (alphabetical order, unaligned tensors,
spaced JSON, metadata last) so the reader is tested on foreign files. The GPT-2 golden runs in float64 with an
HF-layout model written out op by op, and is cross-checked against the nn.Linear model in bench/gpt_model.py.
Run with Debian's interpreter (it has torch): /usr/bin/python3 scripts/gen_fixtures.py
"""
import argparse
import importlib.util
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
DEFAULT_REFERENCE = os.path.join(ROOT, 'bench', 'gpt_model.py')

DTYPES = {'F64': '<f8', 'F32': '<f4', 'F16': '<f2', 'I64': '<i8', 'I32': '<i4', 'U8': 'u1', 'BF16': '<u2'}


# ------------------------------------------------------------------------------------------------ safetensors


def to_bf16_bits(values):
    """float32 values that are exactly representable in bf16 -> their uint16 bit patterns."""
    f = np.asarray(values, dtype='<f4')
    bits = f.view('<u4')
    assert np.all(bits & 0xFFFF == 0), 'bf16 fixture values must be exactly representable'
    return (bits >> 16).astype('<u2')


def write_safetensors(path, tensors, metadata, reference_layout=True):
    """tensors: list of (name, dtype, shape, numpy array). reference_layout=True mimics the Rust writer
    (sorted by element size descending then name, compact JSON, __metadata__ first); False writes in the given
    order with spaced JSON and __metadata__ last, leaving tensors unaligned."""
    entries = []
    for name, dtype, shape, arr in tensors:
        data = np.ascontiguousarray(arr, dtype=DTYPES[dtype]).tobytes()
        assert len(data) == int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize, name
        entries.append((name, dtype, list(shape), data))
    if reference_layout:
        entries.sort(key=lambda e: (-np.dtype(DTYPES[e[1]]).itemsize, e[0]))
    header = {}
    if reference_layout and metadata:
        header['__metadata__'] = dict(sorted(metadata.items()))
    offset = 0
    for name, dtype, shape, data in entries:
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [offset, offset + len(data)]}
        offset += len(data)
    if not reference_layout and metadata:
        header['__metadata__'] = dict(sorted(metadata.items()))
    if reference_layout:
        text = json.dumps(header, separators=(',', ':')).encode()
    else:
        text = json.dumps(header).encode()
    text += b' ' * ((8 - len(text) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)))
        f.write(text)
        for _, _, _, data in entries:
            f.write(data)


def gen_small(path):
    """Values here are repeated literally in tests/ckpt/safetensors_test.cpp (ReadsPythonFixture)."""
    tensors = [
        ('a_f32', 'F32', [2, 3], [[1.0, -2.5, 3.25], [0.1, 1e30, -0.0]]),
        ('b_bf16', 'BF16', [4], to_bf16_bits([1.0, -2.0, 0.5, 3.140625])),
        ('c_f16', 'F16', [2, 2], [[1.0, -0.5], [65504.0, 2.0 ** -24]]),
        ('d_i32', 'I32', [3], [-1, 0, 2147483647]),
        ('e_i64', 'I64', [2], [-(2 ** 40), 7]),
        ('f_u8', 'U8', [5], [0, 1, 2, 254, 255]),
        ('g_scalar', 'F32', [], 42.0),
    ]
    write_safetensors(path, tensors, {'format': 'pt', 'producer': 'scripts/gen_fixtures.py'},
                      reference_layout=False)


# ------------------------------------------------------------------------------------------------ tiny GPT-2

CFG = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=16, B=2, T=8, seed=1234)
# eps is 1e-4, not the usual 1e-8: some exact gradients here are zero (the key bias cannot change the softmax)
# or below 1e-6, where Adam's m/sqrt(v) turns fp32 rounding noise into full-size updates; a larger eps keeps the
# 3-step comparison well conditioned while still exercising every term of the update.
OPT = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-4, weight_decay=0.1)
LN_EPS = 1e-5


def hf_param_shapes(L, C, V, Tmax):
    """Hugging Face GPT-2 names and layouts (Conv1D weights are [in, out]); no lm_head (tied to wte)."""
    shapes = [('transformer.wte.weight', [V, C]), ('transformer.wpe.weight', [Tmax, C])]
    for i in range(L):
        p = f'transformer.h.{i}.'
        shapes += [(p + 'ln_1.weight', [C]), (p + 'ln_1.bias', [C]),
                   (p + 'attn.c_attn.weight', [C, 3 * C]), (p + 'attn.c_attn.bias', [3 * C]),
                   (p + 'attn.c_proj.weight', [C, C]), (p + 'attn.c_proj.bias', [C]),
                   (p + 'ln_2.weight', [C]), (p + 'ln_2.bias', [C]),
                   (p + 'mlp.c_fc.weight', [C, 4 * C]), (p + 'mlp.c_fc.bias', [4 * C]),
                   (p + 'mlp.c_proj.weight', [4 * C, C]), (p + 'mlp.c_proj.bias', [C])]
    shapes += [('transformer.ln_f.weight', [C]), ('transformer.ln_f.bias', [C])]
    return shapes


def init_params(shapes, gen):
    """Weights N(0, 0.02); LayerNorm weights 1 + 0.1 N(0,1); every bias 0.02 N(0,1) so all grads are non-trivial."""
    params = {}
    for name, shape in shapes:
        z = torch.randn(shape, generator=gen, dtype=torch.float64)
        if name.endswith('ln_1.weight') or name.endswith('ln_2.weight') or name.endswith('ln_f.weight'):
            t = 1.0 + 0.1 * z
        else:  # weights and biases alike
            t = 0.02 * z
        params[name] = t.requires_grad_(True)
    return params


def layer_norm(x, w, b):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as nn.LayerNorm
    return (x - mean) / torch.sqrt(var + LN_EPS) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def hf_forward(P, idx, targets, L, NH):
    """Returns (logits [B,T,V], mean cross-entropy). Written op by op; shares no module code with gpt_model.py."""
    B, T = idx.shape
    wte = P['transformer.wte.weight']
    C = wte.shape[1]
    HS = C // NH
    x = wte[idx] + P['transformer.wpe.weight'][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(L):
        p = f'transformer.h.{i}.'
        h = layer_norm(x, P[p + 'ln_1.weight'], P[p + 'ln_1.bias'])
        qkv = h @ P[p + 'attn.c_attn.weight'] + P[p + 'attn.c_attn.bias']  # [B,T,3C] = q | k | v
        q, k, v = (qkv[..., j * C:(j + 1) * C].reshape(B, T, NH, HS).permute(0, 2, 1, 3) for j in range(3))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(HS)
        att = att.masked_fill(~mask, float('-inf'))
        att = torch.exp(att - att.max(dim=-1, keepdim=True).values)
        att = att / att.sum(dim=-1, keepdim=True)
        y = (att @ v).permute(0, 2, 1, 3).reshape(B, T, C)
        x = x + (y @ P[p + 'attn.c_proj.weight'] + P[p + 'attn.c_proj.bias'])
        h = layer_norm(x, P[p + 'ln_2.weight'], P[p + 'ln_2.bias'])
        h = gelu_tanh(h @ P[p + 'mlp.c_fc.weight'] + P[p + 'mlp.c_fc.bias'])
        x = x + (h @ P[p + 'mlp.c_proj.weight'] + P[p + 'mlp.c_proj.bias'])
    x = layer_norm(x, P['transformer.ln_f.weight'], P['transformer.ln_f.bias'])
    logits = x @ wte.t()
    flat = logits.reshape(B * T, -1)
    logz = torch.logsumexp(flat, dim=-1)
    loss = (logz - flat.gather(1, targets.reshape(-1, 1)).squeeze(1)).mean()
    return logits, loss


def load_reference(path):
    spec = importlib.util.spec_from_file_location('gpt_model_reference', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_against_reference(ref_path, P, idx, targets, loss, grads):
    """Copies the HF-layout params into gpt_model.GPT (nn.Linear: weight = W^T) and compares loss and grads."""
    mod = load_reference(ref_path)
    L, NH, C, V, Tmax = (CFG[k] for k in ('n_layer', 'n_head', 'n_embd', 'vocab_size', 'block_size'))
    model = mod.GPT(L, NH, C, V, Tmax).double()
    ref_names = {}
    for name in P:
        ref = name[len('transformer.'):]
        transpose = ref.endswith('.weight') and ('c_attn' in ref or 'c_proj' in ref or 'c_fc' in ref)
        ref_names[name] = (ref, transpose)
    ref_params = dict(model.named_parameters())
    assert set(r for r, _ in ref_names.values()) == set(ref_params), 'parameter sets differ from gpt_model.GPT'
    with torch.no_grad():
        for name, (ref, transpose) in ref_names.items():
            src = P[name].detach()
            ref_params[ref].copy_(src.t() if transpose else src)
    ref_loss = model(idx, targets)
    ref_loss.backward()
    diff = abs(ref_loss.item() - loss.item())
    assert diff < 1e-10, f'loss mismatch vs {ref_path}: {ref_loss.item()!r} vs {loss.item()!r}'
    worst = 0.0
    for name, (ref, transpose) in ref_names.items():
        g = ref_params[ref].grad
        g = g.t() if transpose else g
        worst = max(worst, (g - grads[name]).abs().max().item())
    assert worst < 1e-10, f'gradient mismatch vs {ref_path}: max abs diff {worst}'
    print(f'reference check: |loss diff| = {diff:.3e}, max |grad diff| = {worst:.3e} ({ref_path})')


def gen_gpt2_golden(path, ref_path):
    torch.set_default_dtype(torch.float64)
    L, NH, C, V, Tmax = (CFG[k] for k in ('n_layer', 'n_head', 'n_embd', 'vocab_size', 'block_size'))
    B, T = CFG['B'], CFG['T']
    gen = torch.Generator().manual_seed(CFG['seed'])
    shapes = hf_param_shapes(L, C, V, Tmax)
    P = init_params(shapes, gen)
    buf = torch.randint(0, V, (B, T + 1), generator=gen)
    idx, targets = buf[:, :-1].contiguous(), buf[:, 1:].contiguous()

    init = {n: p.detach().clone() for n, p in P.items()}
    logits, loss = hf_forward(P, idx, targets, L, NH)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in P.items()}
    for n, g in grads.items():
        assert g.abs().max().item() > 0, f'gradient of {n} is zero; the fixture would not test it'

    if ref_path:
        check_against_reference(ref_path, {n: init[n] for n in P}, idx, targets, loss, grads)

    opt = torch.optim.AdamW(list(P.values()), lr=OPT['lr'], betas=OPT['betas'], eps=OPT['eps'],
                            weight_decay=OPT['weight_decay'])
    step_losses = []
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        _, step_loss = hf_forward(P, idx, targets, L, NH)
        step_loss.backward()
        step_losses.append(step_loss.item())
        opt.step()
    assert step_losses[0] == loss.item()
    assert step_losses[2] < step_losses[0], f'AdamW did not reduce the loss: {step_losses}'

    f32 = lambda t: t.detach().to(torch.float32).numpy()
    tensors = []
    for name, shape in shapes:
        tensors.append(('param.' + name, 'F32', shape, f32(init[name])))
        tensors.append(('grad.' + name, 'F32', shape, f32(grads[name])))
        tensors.append(('adamw3.' + name, 'F32', shape, f32(P[name])))
    tensors.append(('input_ids', 'I32', [B, T], idx.numpy()))
    tensors.append(('targets', 'I32', [B, T], targets.numpy()))
    tensors.append(('logits', 'F32', [B, T, V], f32(logits)))
    tensors.append(('loss', 'F32', [1], np.array([loss.item()])))
    for s, l in enumerate(step_losses):
        tensors.append((f'loss_step{s}', 'F32', [1], np.array([l])))

    metadata = {k: str(v) for k, v in CFG.items()}
    metadata.update(lr=repr(OPT['lr']), betas=f"{OPT['betas'][0]!r},{OPT['betas'][1]!r}",
                    beta1=repr(OPT['betas'][0]), beta2=repr(OPT['betas'][1]), eps=repr(OPT['eps']),
                    weight_decay=repr(OPT['weight_decay']), ln_eps=repr(LN_EPS), gelu='tanh',
                    compute_dtype='float64', adamw_steps='3', format='pt',
                    generator='scripts/gen_fixtures.py')
    write_safetensors(path, tensors, metadata, reference_layout=True)
    print(f'loss {loss.item():.12f}; AdamW losses {[round(x, 12) for x in step_losses]}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=FIXTURES, help='output folder (default: tests/fixtures)')
    ap.add_argument('--reference', default=DEFAULT_REFERENCE,
                    help='gpt_model.py whose GPT the golden model must match (default: %(default)s)')
    ap.add_argument('--skip-reference-check', action='store_true',
                    help='do not cross-check against --reference (the fixture bytes do not depend on it)')
    a = ap.parse_args()
    ref = None
    if not a.skip_reference_check:
        if not os.path.exists(a.reference):
            sys.exit(f'reference model {a.reference} not found: pass --reference PATH or --skip-reference-check')
        ref = a.reference
    os.makedirs(a.out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one thread: identical float64 reductions, identical bytes on every run
    gen_small(os.path.join(a.out, 'safetensors_small.safetensors'))
    gen_gpt2_golden(os.path.join(a.out, 'gpt2_tiny_golden.safetensors'), ref)
    for name in ('safetensors_small.safetensors', 'gpt2_tiny_golden.safetensors'):
        print(f'wrote {os.path.join(a.out, name)} ({os.path.getsize(os.path.join(a.out, name))} bytes)')


if __name__ == '__main__':
    main()
