#!/usr/bin/python3
"""PyTorch reference for single-stream, KV-cached greedy decoding of our GPT-2 weights (a consolidated
.safetensors file in Hugging Face GPT-2 layout), to set beside dspeed's own decode figure.

One repeat: prefill the prompt in one forward (logits of the last position only), whose argmax is generated token
0; then new-tokens - 1 decode steps, each one forward of the previous token against a preallocated per-layer K/V
cache [NH, block_size, HS], then argmax. decode_tokens_per_s = decode steps / their time; prefill_tokens_per_s =
prompt tokens / prefill time; medians over --repeats (after one untimed warm-up repeat).
The step is written as a real CPU implementation would be in eager PyTorch: inference_mode, weights kept in
Conv1D layout for addmm (out = b + x @ W), fused F.layer_norm / F.gelu(tanh) / softmax, no per-step allocation of
the cache, and no per-step Python work besides reading the argmax that picks the next token.
--check regenerates while recording every step's logits and compares them, and their argmax, with a full-recompute
(no cache) float64 forward of scripts/gen_fixtures.py's op-by-op model over the same tokens; exit 1 on mismatch.
--device cuda runs the same step on an NVIDIA GPU (a CUDA build of PyTorch 2.x): weights, cache, mask and ids live
there, still fp32 with TF32 off (torch.backends.cuda.matmul / cudnn.allow_tf32 = False) to compare with an fp32
engine, and each timed region (prefill, decode) reads the clock after torch.cuda.synchronize() at both ends. The
argmax that picks each token is the same; --threads still sets the CPU threads. Exit 2 if CUDA is not available.
The result is one line, RESULT {json}: decode and prefill tokens/s, the generated ids, the settings, the device
("cpu" or torch.cuda.get_device_name()).
Usage: /usr/bin/python3 bench/torch_decode.py --model FILE.safetensors --prompt-tokens 32 --new-tokens 128
       --repeats 5 --threads 2 [--device cpu|cuda] [--check] [--n-head N] [--prompt-ids 1,2,3]
"""
import argparse
import json
import os
import statistics
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', required=True, help='consolidated GPT-2 .safetensors (dspeed ckpt consolidate)')
    p.add_argument('--prompt-tokens', type=int, default=32)
    p.add_argument('--prompt-ids', default=None, help='comma-separated prompt ids (overrides --prompt-tokens)')
    p.add_argument('--new-tokens', type=int, default=128)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=2, help='CPU threads (torch, OpenMP, BLAS), whatever --device')
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                   help='where the weights and the step run: cpu (default) or cuda (an NVIDIA GPU, fp32, no TF32)')
    p.add_argument('--seed', type=int, default=1234, help='seed of the random prompt')
    p.add_argument('--n-head', type=int, default=None,
                   help='attention heads (default: the file\'s __metadata__ "ds_model" entry)')
    p.add_argument('--check', action='store_true',
                   help='verify the tokens against a full-recompute float64 forward (scripts/gen_fixtures.py)')
    return p.parse_args()


ARGS = parse()
# Thread counts must be in the environment before torch (and its BLAS) is loaded. torch's OpenMP pool and
# OpenBLAS's pthread pool are separate: with active waiting, OpenMP threads left spinning after the small decode ops
# take the cores from OpenBLAS's prefill GEMMs (measured 25-40x slower prefill on 2 cores), so they wait passively.
for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': np.uint16}
LN_EPS = 1e-5


def read_safetensors(path):
    """Returns ({name: float32 tensor}, metadata dict). Plain json + numpy; no safetensors package."""
    with open(path, 'rb') as f:
        blob = f.read()
    (n,) = struct.unpack('<Q', blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop('__metadata__', {}) or {}
    tensors = {}
    for name, info in header.items():
        if info['dtype'] not in DTYPES:
            sys.exit(f'torch_decode: tensor {name} has dtype {info["dtype"]}; expected F32, F16, BF16 or F64')
        a, b = info['data_offsets']
        dt = np.dtype(DTYPES[info['dtype']])
        raw = np.frombuffer(blob, dtype=dt, count=(b - a) // dt.itemsize, offset=8 + n + a)
        if info['dtype'] == 'BF16':
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = torch.from_numpy(raw.astype(np.float32).reshape(info['shape']))  # astype copies: writable
    return tensors, meta


class Model:
    """Weights of the file, arranged for decoding, and the KV cache."""

    def __init__(self, P, n_head, device):
        def dev(t):  # on the CPU, the same tensor: no copy
            return t.to(device).contiguous()

        self.wte = dev(P['transformer.wte.weight'])  # [V, C]; also the tied head
        self.wpe = dev(P['transformer.wpe.weight'])  # [block, C]
        self.V, self.C = self.wte.shape
        self.block = self.wpe.shape[0]
        self.NH = n_head
        if self.C % n_head:
            sys.exit(f'torch_decode: n_embd {self.C} is not a multiple of n_head {n_head}')
        self.HS = self.C // n_head
        self.L = 0
        while f'transformer.h.{self.L}.ln_1.weight' in P:
            self.L += 1
        names = ('ln_1.weight', 'ln_1.bias', 'attn.c_attn.weight', 'attn.c_attn.bias', 'attn.c_proj.weight',
                 'attn.c_proj.bias', 'ln_2.weight', 'ln_2.bias', 'mlp.c_fc.weight', 'mlp.c_fc.bias',
                 'mlp.c_proj.weight', 'mlp.c_proj.bias')
        self.layers = [tuple(dev(P[f'transformer.h.{i}.{n}']) for n in names) for i in range(self.L)]
        self.ln_f = (P['transformer.ln_f.weight'].to(device), P['transformer.ln_f.bias'].to(device))
        self.device = device
        self.k_cache = [torch.zeros(self.NH, self.block, self.HS, device=device) for _ in range(self.L)]
        self.v_cache = [torch.zeros(self.NH, self.block, self.HS, device=device) for _ in range(self.L)]
        self.scale = 1.0 / (self.HS ** 0.5)
        self.mask = torch.full((self.block, self.block), float('-inf'), device=device).triu_(1)  # additive, causal
        # A GPU runs asynchronously: each timed region waits for the queued kernels before reading the clock.
        self.sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

    def forward(self, ids, start):
        """ids: [T] long at positions start..start+T-1; fills the caches there; returns logits [V] of the last."""
        T = ids.shape[0]
        C, NH, HS = self.C, self.NH, self.HS
        end = start + T
        x = self.wte[ids] + self.wpe[start:end]  # [T, C]
        mask = self.mask[start:end, :end] if T > 1 else None
        for (ln1w, ln1b, attn_w, attn_b, proj_w, proj_b, ln2w, ln2b, fc_w, fc_b, fc2_w, fc2_b), kc, vc in zip(
                self.layers, self.k_cache, self.v_cache):
            h = F.layer_norm(x, (C,), ln1w, ln1b, LN_EPS)
            qkv = torch.addmm(attn_b, h, attn_w).view(T, 3, NH, HS)
            kc[:, start:end] = qkv[:, 1].transpose(0, 1)
            vc[:, start:end] = qkv[:, 2].transpose(0, 1)
            q = qkv[:, 0].transpose(0, 1)  # [NH, T, HS]
            att = torch.baddbmm(mask, q, kc[:, :end].transpose(1, 2), alpha=self.scale) if mask is not None \
                else torch.bmm(q, kc[:, :end].transpose(1, 2)).mul_(self.scale)  # [NH, T, end]
            att = torch.softmax(att, dim=-1)
            y = torch.bmm(att, vc[:, :end]).transpose(0, 1).reshape(T, C)
            x = torch.addmm(proj_b, y, proj_w).add_(x)
            h = F.layer_norm(x, (C,), ln2w, ln2b, LN_EPS)
            h = F.gelu(torch.addmm(fc_b, h, fc_w), approximate='tanh')
            x = torch.addmm(fc2_b, h, fc2_w).add_(x)
        h = F.layer_norm(x[-1], (C,), self.ln_f[0], self.ln_f[1], LN_EPS)
        return F.linear(h, self.wte)  # [V]


def generate(model, prompt, n_new, record=None):
    """Greedy: returns (tokens, prefill seconds, decode seconds); appends each step's logits to record if given.
    prompt is on model.device."""
    model.sync()
    t0 = time.perf_counter()
    logits = model.forward(prompt, 0)
    tok = int(torch.argmax(logits))
    model.sync()
    t1 = time.perf_counter()
    if record is not None:
        record.append(logits.clone())
    tokens = [tok]
    pos = prompt.shape[0]
    cur = torch.empty(1, dtype=torch.long, device=model.device)
    for _ in range(n_new - 1):
        cur[0] = tok
        logits = model.forward(cur, pos)
        tok = int(torch.argmax(logits))
        if record is not None:
            record.append(logits.clone())
        tokens.append(tok)
        pos += 1
    model.sync()
    t2 = time.perf_counter()
    return tokens, t1 - t0, t2 - t1


def check(model, P, n_head, prompt, n_new, timed_tokens):
    """Re-generates with the cache, recording logits, and compares with a full float64 forward (no cache) of the
    same tokens: every argmax must agree (up to near-ties) and the logits to float32 accuracy."""
    record = []
    tokens, _, _ = generate(model, prompt, n_new, record)
    ours = torch.stack(record).cpu().double()  # [n_new, V]
    import importlib.util
    spec = importlib.util.spec_from_file_location('gen_fixtures', os.path.join(ROOT, 'scripts', 'gen_fixtures.py'))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    P64 = {k: v.double() for k, v in P.items()}
    seq = torch.tensor(prompt.tolist() + tokens, dtype=torch.long).unsqueeze(0)
    logits, _ = gen.hf_forward(P64, seq, seq, model.L, n_head)  # [1, T, V]
    T0 = prompt.shape[0]
    ref = logits[0, T0 - 1:-1]  # the logits that chose each generated token
    ref_tokens = ref.argmax(dim=-1).tolist()
    mismatches = [i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b]
    # A mismatch where the reference's top two are closer than float32 noise is a tie, not a bug.
    hard = []
    for i in mismatches:
        top2 = ref[i].topk(2).values
        if (top2[0] - top2[1]).item() > 1e-4 * max(1.0, top2[0].abs().item()):
            hard.append(i)
    err = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    distinct = len(set(tokens))
    print(f'check: {len(tokens)} tokens ({distinct} distinct) vs full-recompute float64 forward: {len(mismatches)} '
          f'argmax differ ({len(hard)} beyond near-ties); max |logit diff| {err:.2e} (logits up to {scale:.2f})',
          file=sys.stderr)
    if tokens != timed_tokens:
        print('check: the recording run generated other tokens than the timed runs', file=sys.stderr)
    return not hard and err <= 1e-3 * max(1.0, scale) and tokens == timed_tokens


def main():
    a = ARGS
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            print(f'torch_decode: --device cuda expects a CUDA build of PyTorch (2.x) with a visible NVIDIA GPU, but '
                  f'torch.cuda.is_available() is false here (torch {torch.__version__}, CUDA build: '
                  f'{torch.version.cuda or "none"}); run it on a GPU machine with a CUDA-enabled torch, or use '
                  f'--device cpu', file=sys.stderr)
            sys.exit(2)
        # fp32 throughout, as the engine it is set beside: no TF32 in the matmuls (addmm/bmm) or cuDNN.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = 'cpu'
    P, meta = read_safetensors(a.model)
    n_head = a.n_head
    if n_head is None:
        if 'ds_model' not in meta:
            sys.exit('torch_decode: the file has no "ds_model" metadata; pass --n-head')
        cfg = meta['ds_model']
        n_head = int((json.loads(cfg) if isinstance(cfg, str) else cfg)['n_head'])
    model = Model(P, n_head, device)
    if a.prompt_ids:
        prompt = torch.tensor([int(s) for s in a.prompt_ids.split(',')], dtype=torch.long)
    else:
        prompt = torch.randint(0, model.V, (a.prompt_tokens,), generator=torch.Generator().manual_seed(a.seed))
    if a.new_tokens < 2 or prompt.shape[0] < 1:
        sys.exit('torch_decode: need at least 1 prompt token and 2 new tokens')
    if prompt.shape[0] + a.new_tokens - 1 > model.block:
        sys.exit(f'torch_decode: {prompt.shape[0]} prompt + {a.new_tokens} new tokens exceed the model\'s '
                 f'{model.block} positions')
    if int(prompt.min()) < 0 or int(prompt.max()) >= model.V:
        sys.exit(f'torch_decode: prompt ids must be in [0, {model.V})')

    prompt = prompt.to(device)  # drawn on the CPU above, so every device decodes the same prompt

    prefill, decode = [], []
    with torch.inference_mode():
        generate(model, prompt, a.new_tokens)  # warm-up: thread pools, allocator, first-touch of weights, CUDA init
        for _ in range(a.repeats):
            tokens, tp, td = generate(model, prompt, a.new_tokens)
            prefill.append(tp)
            decode.append(td)
    ok = True
    if a.check:
        with torch.inference_mode():
            ok = check(model, P, n_head, prompt, a.new_tokens, tokens)
    result = {
        'decode_tokens_per_s': (a.new_tokens - 1) / statistics.median(decode),
        'prefill_tokens_per_s': prompt.shape[0] / statistics.median(prefill),
        'decode_ms_per_token': 1e3 * statistics.median(decode) / (a.new_tokens - 1),
        'prompt_tokens': int(prompt.shape[0]), 'new_tokens': a.new_tokens, 'decode_steps': a.new_tokens - 1,
        'repeats': a.repeats, 'threads': a.threads, 'torch': torch.__version__, 'device': device_name,
        'model': dict(n_layer=model.L, n_head=n_head, n_embd=model.C, vocab_size=model.V, block_size=model.block),
        'tokens': tokens,
    }
    if a.check:
        result['check'] = 'ok' if ok else 'MISMATCH'
    print('RESULT ' + json.dumps(result), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
