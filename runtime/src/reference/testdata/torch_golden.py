"""Golden values for the reference interpreter, computed with PyTorch.

Regenerate with `python3 torch_golden.py > torch_golden.json` (any PyTorch 2.x,
CPU). Each case stores its inputs and PyTorch's output; `golden.rs` runs the
reference kernels on the same inputs. The formulas below are written from the
reference implementations' documented behaviour (F.interpolate, DiT's
timestep embedding, LlamaGen's RMSNorm and interleaved RoPE, VAR's top-k/top-p
filter), not copied from them.
"""
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

torch.manual_seed(0)
cases = []


def t2l(x):
    # The shortest decimal that parses back to the same f32.
    return [float(np.format_float_positional(v, unique=True)) for v in x.detach().float().reshape(-1).numpy()]


def add(name, op, inputs, out, **attrs):
    cases.append({
        "name": name,
        "op": op,
        "attrs": attrs,
        "inputs": [{"shape": list(x.shape), "data": t2l(x)} for x in inputs],
        "out": {"shape": list(out.shape), "data": t2l(out)},
    })


# ---- resize: F.interpolate, align_corners=False; area = adaptive_avg_pool2d
for (ih, iw, oh, ow) in [(3, 5, 7, 4), (4, 4, 16, 16), (5, 3, 2, 7), (13, 13, 16, 16), (16, 16, 13, 13),
                         (16, 16, 3, 5), (1, 1, 2, 2), (2, 2, 4, 4), (6, 6, 6, 6), (10, 10, 16, 16)]:
    x = torch.randn(1, 2, ih, iw)
    for mode in ["nearest", "bilinear", "bicubic", "area"]:
        kw = {} if mode in ("nearest", "area") else {"align_corners": False}
        y = F.interpolate(x, size=(oh, ow), mode=mode, **kw)
        add(f"resize_{mode}_{ih}x{iw}_to_{oh}x{ow}", "resize", [x], y, mode=mode, h=oh, w=ow)

# ---- element-wise
x = torch.linspace(-6, 6, 97)
add("gelu", "gelu", [x], F.gelu(x))
add("gelu_tanh", "gelu_tanh", [x], F.gelu(x, approximate="tanh"))
add("silu", "silu", [x], F.silu(x))
add("tanh", "tanh", [x], torch.tanh(x))
add("exp", "exp", [x], torch.exp(x))

# ---- norms
x = torch.randn(4, 5, 24) * 3 + 1
w = torch.randn(24)
b = torch.randn(24)
add("layer_norm_affine", "layer_norm", [x, w, b], F.layer_norm(x, (24,), w, b, eps=1e-6), eps=1e-6)
add("layer_norm_plain", "layer_norm", [x], F.layer_norm(x, (24,), eps=1e-6), eps=1e-6)
rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
add("rms_norm", "rms_norm", [x, w], rms, eps=1e-5)
xg = torch.randn(2, 8, 3, 5) * 2
wg = torch.randn(8)
bg = torch.randn(8)
add("group_norm", "group_norm", [xg, wg, bg], F.group_norm(xg, 4, wg, bg, eps=1e-6), groups=4, eps=1e-6)
add("l2_normalize", "l2_normalize", [x], F.normalize(x, dim=-1, eps=1e-12), eps=1e-12)
add("softmax", "softmax", [x], torch.softmax(x, dim=-1))

# ---- linear algebra
xl = torch.randn(3, 7, 19)
wl = torch.randn(11, 19)
bl = torch.randn(11)
add("linear", "linear", [xl, wl, bl], F.linear(xl, wl, bl))
a = torch.randn(2, 1, 4, 6)
bm = torch.randn(3, 6, 5)
add("matmul_broadcast", "matmul", [a, bm], a @ bm)
xc = torch.randn(2, 3, 9, 8)
wc = torch.randn(5, 3, 3, 3)
bc = torch.randn(5)
add("conv2d_s2_p1", "conv2d", [xc, wc, bc], F.conv2d(xc, wc, bc, stride=2, padding=1), stride=2, pad=1)
add("conv2d_s1_p1", "conv2d", [xc, wc, bc], F.conv2d(xc, wc, bc, stride=1, padding=1), stride=1, pad=1)
wc1 = torch.randn(4, 3, 1, 1)
add("conv2d_1x1", "conv2d", [xc, wc1], F.conv2d(xc, wc1), stride=1, pad=0)


# ---- DiT's timestep embedding: [cos, sin], freqs exp(-ln(max_period) k / half)
def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


ts = torch.tensor([0.0, 1.5, 999.0, 500.25, 0.001])
add("sinusoid_256", "sinusoid", [ts], timestep_embedding(ts, 256), dim=256, max_period=10000.0)
add("sinusoid_8", "sinusoid", [ts], timestep_embedding(ts, 8), dim=8, max_period=10000.0)

# ---- LlamaGen's interleaved RoPE: pairs (x[2i], x[2i+1]) rotated by (cos, sin)[t, i]
xr = torch.randn(2, 3, 5, 8)  # [B, H, T, d]
ang = torch.randn(5, 4) * 3
cos, sin = torch.cos(ang), torch.sin(ang)
xs = xr.reshape(2, 3, 5, 4, 2)
ro = torch.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], dim=-1).flatten(3)
add("rope", "rope", [xr, cos, sin], ro)


# ---- VAR's top-k / top-p filter: the kept set (1 = kept) on logits [rows, V]
def var_filter(logits, top_k, top_p):
    logits = logits.clone()
    if top_k > 0:
        kth = logits.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    return (logits > -torch.inf).float()


lg = torch.randn(6, 50) * 2
for (k, p) in [(0, 0.9), (10, 1.0), (10, 0.5), (3, 0.96), (0, 0.3), (45, 0.96)]:
    add(f"filter_k{k}_p{p}", "filter", [lg], var_filter(lg, k, p), top_k=k, top_p=p)

print(json.dumps({"torch": torch.__version__, "cases": cases}))
