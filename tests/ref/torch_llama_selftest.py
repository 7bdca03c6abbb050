"""Checks torch_llama.py on its own, before anything is compared against it:

  - its forward equals an independent, loop-by-loop Llama (RoPE as complex rotations, one query
    head at a time reading kv head h // g, softmax over each causal prefix written out) for MHA,
    GQA and MQA, tied and untied;
  - GQA is MHA with each kv head's weights repeated over its contiguous group of query heads
    (and the interleaved mapping, the mutant, is not);
  - RoPE: identity at position 0, norm-preserving, scores depend only on the relative position,
    and the interleaved (GPT-J) convention is the rotate-half one up to a permutation of the head
    dimensions, but not equal to it;
  - RMSNorm gives unit RMS with eps 0 and a gain of 1; eps matters;
  - torch.autograd.gradcheck in float64 on every piece and on the whole loss, tiny shape;
  - llama_torch_reference_test.py, run on dumps torch_llama writes in float32 (--torch-fp32),
    passes its fp32 bounds and catches every mutant: the test itself works before the C++ dump
    exists.

Usage: torch_llama_selftest.py [BUILD_DIR]   (BUILD_DIR is accepted for ctest and not used)"""
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch_llama as tl  # noqa: E402

failures = []


def check(what, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        failures.append(what)


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def naive_forward(W, ids, cfg):
    """Llama from the paper's definitions, sharing no code with torch_llama."""
    B, T = ids.shape
    emb = W["model.embed_tokens.weight"]
    V, C = emb.shape
    NH, NKV = cfg.n_head, cfg.n_kv_head
    hd, group = C // NH, NH // NKV

    def norm(x, w):
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) / C + cfg.rms_norm_eps) * w

    # Pair i of a head is (x[i], x[i + hd/2]) = x[i] + j x[i + hd/2], turned by t * theta^(-2i/hd).
    freq = torch.tensor([cfg.rope_theta ** (-2.0 * i / hd) for i in range(hd // 2)], dtype=torch.float64)

    def rotate(x, t):
        z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * torch.exp(1j * t * freq)
        return torch.cat((z.real, z.imag), dim=-1)

    x = emb[ids]
    for l in range(cfg.n_layer):
        p = f"model.layers.{l}."
        h = norm(x, W[p + "input_layernorm.weight"])
        q = h @ W[p + "self_attn.q_proj.weight"].T
        k = h @ W[p + "self_attn.k_proj.weight"].T
        v = h @ W[p + "self_attn.v_proj.weight"].T
        out = torch.zeros(B, T, NH * hd, dtype=x.dtype)
        for b in range(B):
            for head in range(NH):
                j = head // group
                qs = [rotate(q[b, t, head * hd:(head + 1) * hd], t) for t in range(T)]
                ks = [rotate(k[b, s, j * hd:(j + 1) * hd], s) for s in range(T)]
                for t in range(T):
                    scores = torch.stack([qs[t] @ ks[s] / math.sqrt(hd) for s in range(t + 1)])
                    e = torch.exp(scores - scores.max())
                    w = e / e.sum()
                    out[b, t, head * hd:(head + 1) * hd] = sum(w[s] * v[b, s, j * hd:(j + 1) * hd] for s in range(t + 1))
        x = x + out @ W[p + "self_attn.o_proj.weight"].T
        h = norm(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + torch.exp(-g))) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    x = norm(x, W["model.norm.weight"])
    head_w = emb if cfg.tie_word_embeddings else W["lm_head.weight"]
    return x @ head_w.T


def cfg_of(nh, nkv, tied, n_layer=2, theta=10000.0, eps=1e-5):
    return tl.LlamaConfig(n_layer=n_layer, n_head=nh, n_kv_head=nkv, rope_theta=theta, rms_norm_eps=eps,
                          tie_word_embeddings=tied)


def test_forward_matches_naive():
    ids = torch.tensor([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]])
    for nkv, tied in ((4, False), (2, False), (2, True), (1, True)):
        cfg = cfg_of(4, nkv, tied, theta=500.0)  # a small theta turns the slow pairs visibly too
        W = tl.random_weights(cfg, 16, 24, 11, seed=nkv + 10 * tied, std=0.3)
        got, want = tl.forward(W, ids, cfg), naive_forward(W, ids, cfg)
        e = max_rel(got, want)
        check(f"forward equals the loop-by-loop Llama (NH=4 NKV={nkv} tied={tied})", e < 1e-12, f"max rel {e:.1e}")


def test_gqa_is_mha_with_repeated_kv_heads():
    ids = torch.tensor([[7, 2, 9, 4, 4, 1, 0, 3]])
    gqa = cfg_of(6, 2, False)
    mha = cfg_of(6, 6, False)
    W = tl.random_weights(gqa, 24, 40, 13, seed=3, std=0.3)
    hd, group = 24 // 6, 3
    Wm = dict(W)
    for l in range(gqa.n_layer):
        for name in ("k_proj", "v_proj"):
            key = f"model.layers.{l}.self_attn.{name}.weight"
            rows = W[key].view(gqa.n_kv_head, hd, -1)
            Wm[key] = rows.repeat_interleave(group, dim=0).reshape(mha.n_head * hd, -1)  # head h <- kv head h // g
    want = tl.forward(Wm, ids, mha)
    e = max_rel(tl.forward(W, ids, gqa), want)
    check("GQA equals MHA whose kv head h is GQA's kv head h // g", e < 1e-13, f"max rel {e:.1e}")
    e = max_rel(tl.forward(W, ids, gqa, tl.mutant_hooks("kv_heads_interleaved", gqa)), want)
    check("the interleaved kv mapping (mutant) does not", e > 1e-3, f"max rel {e:.1e}")
    for nkv in (1, 6):
        c = cfg_of(6, nkv, False)
        Wc = tl.random_weights(c, 24, 40, 13, seed=4)
        e = max_rel(tl.forward(Wc, ids, c, tl.mutant_hooks("kv_heads_interleaved", c)), tl.forward(Wc, ids, c))
        check(f"the kv mutant changes nothing at NKV={nkv} of 6 (so the test skips it there)",
              e == 0.0 and not tl.mutant_applies("kv_heads_interleaved", c), f"max rel {e:.1e}")
    check("the kv mutant applies at 1 < NKV < NH", tl.mutant_applies("kv_heads_interleaved", gqa))


def test_rope():
    g = torch.Generator().manual_seed(0)
    T, hd, theta = 12, 8, 10000.0
    cos, sin = tl.rope_cos_sin(T, hd, theta, torch.float64)
    x = torch.randn(2, 3, T, hd, generator=g, dtype=torch.float64)
    r = tl.apply_rope(x, cos, sin)
    check("RoPE at position 0 is the identity", torch.equal(r[..., 0, :], x[..., 0, :]))
    # Pair i = (i, i + hd/2) keeps its length: a rotation.
    pair = lambda y: y[..., : hd // 2] ** 2 + y[..., hd // 2:] ** 2  # noqa: E731
    e = max_rel(pair(r), pair(x))
    check("RoPE preserves every (i, i + HD/2) pair's norm", e < 1e-14, f"max rel {e:.1e}")
    want = torch.tensor([[math.cos(t * theta ** (-2.0 * i / hd)) for i in range(hd // 2)] * 2 for t in range(T)],
                        dtype=torch.float64)
    check("cos[t] = cos(t theta^(-2i/HD)) on both halves", max_rel(cos, want) < 1e-14)
    # Scores depend on positions only through t - s.
    q, k = x[0, 0, 0], x[0, 1, 0]
    rot = lambda y, t: tl.apply_rope(y.expand(T, hd), cos, sin)[t]  # noqa: E731
    a, b = rot(q, 7) @ rot(k, 3), rot(q, 10) @ rot(k, 6)
    check("RoPE scores depend only on the relative position", abs(a - b) < 1e-13 * abs(a), f"{a:.6f} vs {b:.6f}")
    ri = tl.apply_rope_interleaved(x, cos, sin)
    check("the interleaved convention differs from rotate-half", max_rel(ri, r) > 0.1, f"max rel {max_rel(ri, r):.2f}")
    check("the interleaved convention preserves norms too",
          max_rel(ri.norm(dim=-1), x.norm(dim=-1)) < 1e-14)
    # ... and is rotate-half on de-interleaved dimensions (why Meta's original q/k weights need
    # their rows permuted when converted to HF).
    perm = list(range(0, hd, 2)) + list(range(1, hd, 2))
    e = max_rel(ri[..., perm], tl.apply_rope(x[..., perm], cos, sin))
    check("interleaved RoPE = rotate-half RoPE under the de-interleaving permutation", e < 1e-14, f"max rel {e:.1e}")


def test_rms_norm():
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(5, 16, generator=g, dtype=torch.float64)
    y = tl.rms_norm(x, torch.ones(16, dtype=torch.float64), 0.0)
    e = (y.pow(2).mean(-1).sqrt() - 1).abs().max().item()
    check("RMSNorm with gain 1 and eps 0 gives unit RMS", e < 1e-14, f"max |rms - 1| {e:.1e}")
    small = 0.01 * x
    d = max_rel(tl.rms_norm(small, torch.ones(16, dtype=torch.float64), 1e-5),
                tl.rms_norm(small, torch.ones(16, dtype=torch.float64), 1e-6))
    check("RMSNorm's eps matters at small activations", d > 1e-3, f"max rel {d:.1e}")


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    cos, sin = tl.rope_cos_sin(4, 6, 100.0, torch.float64)
    pieces = {
        "RMSNorm": (lambda x, w: tl.rms_norm(x, w, 1e-5), (r(3, 8), r(8))),
        "RoPE": (lambda x: tl.apply_rope(x, cos, sin), (r(2, 2, 4, 6),)),
        "SwiGLU": (lambda x, wg, wu, wd: F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd),
                   (r(3, 5), r(7, 5), r(7, 5), r(5, 7))),
        "GQA causal attention": (lambda q, k, v: tl.causal_attention(q, tl.repeat_kv(k, 2), tl.repeat_kv(v, 2)),
                                 (r(1, 4, 4, 6), r(1, 2, 4, 6), r(1, 2, 4, 6))),
    }
    for name, (fn, inputs) in pieces.items():
        check(f"gradcheck: {name}", torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6))
    for tied in (False, True):
        cfg = cfg_of(4, 2, tied, n_layer=1, theta=100.0)
        W = tl.random_weights(cfg, 8, 12, 7, seed=5, std=0.5)
        names = list(W)
        ids, targets = torch.tensor([[1, 5, 2, 6]]), torch.tensor([[5, 2, 6, 0]])

        def loss(*ws):
            return tl.loss_fn(dict(zip(names, ws)), ids, targets, cfg)

        ws = tuple(W[n].clone().requires_grad_(True) for n in names)
        check(f"gradcheck: whole loss w.r.t. all {len(ws)} weights (GQA, tied={tied})",
              torch.autograd.gradcheck(loss, ws, eps=1e-6, atol=1e-8, rtol=1e-6))


def test_config():
    c = tl.LlamaConfig.from_hf({"num_hidden_layers": 16, "num_attention_heads": 32, "hidden_size": 2048})
    check("HF config defaults: NKV = NH, theta 10000, eps 1e-6, untied",
          (c.n_kv_head, c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings) == (32, 10000.0, 1e-6, False))
    try:
        tl.LlamaConfig(n_layer=1, n_head=6, n_kv_head=4)
        check("NH not a multiple of NKV is rejected", False)
    except ValueError:
        check("NH not a multiple of NKV is rejected", True)


def test_reference_test_on_torch_fp32_dumps():
    """The reference test must pass fp32 rounding and fail every mutant (it checks both)."""
    cmd = ["/usr/bin/python3", os.path.join(HERE, "llama_torch_reference_test.py"), "--torch-fp32",
           "mha_untied", "gqa_tied"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=800)
    print("\n".join("    " + line for line in p.stdout.strip().splitlines()))
    check("llama_torch_reference_test.py --torch-fp32 passes (bounds hold, every mutant caught)",
          p.returncode == 0, p.stderr.strip()[-2000:])


def main():
    torch.set_num_threads(2)
    test_config()
    test_rms_norm()
    test_rope()
    test_forward_matches_naive()
    test_gqa_is_mha_with_repeated_kv_heads()
    test_gradcheck()
    test_reference_test_on_torch_fp32_dumps()
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}")
        sys.exit(1)
    print("all torch_llama self-checks passed")


if __name__ == "__main__":
    main()
