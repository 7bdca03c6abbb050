"""PyTorch side of bench/gpt_vs_torch: the same training step on CPU in fp32 (or bf16 autocast) -- the model of
tests/ref/torch_gpt2.py (--family gpt2) or of tests/ref/torch_llama.py (--family llama), each
Hugging Face's computation -- F.cross_entropy, torch.optim.AdamW with weight decay on matrices
and embeddings only, clip_grad_norm_. Driven over stdin/stdout so the C++ bench can alternate
Trident and PyTorch runs in one invocation:
  stdin "run K"  ->  stdout one JSON line {"step_s": [K step times in seconds], "loss": ...}
  stdin "quit"   ->  exit
It prints {"ready": ...} once the model is built and one warm-up step has run."""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_gpt2  # noqa: E402
import torch_llama  # noqa: E402


def gpt2_model(a):
    """GPT-2 weights with Hugging Face names (Conv1D layout [in, out], GPT-2's init with the
    residual projections scaled by 1/sqrt(2L)) and the forward pass over them."""
    L, C, V = a.n_layer, a.n_embd, a.vocab_size
    std_proj = 0.02 / (2 * L) ** 0.5
    W = {"wte.weight": torch.randn(V, C) * 0.02, "wpe.weight": torch.randn(a.n_positions, C) * 0.02}
    for l in range(L):
        p = f"h.{l}."
        W[p + "ln_1.weight"], W[p + "ln_1.bias"] = torch.ones(C), torch.zeros(C)
        W[p + "attn.c_attn.weight"], W[p + "attn.c_attn.bias"] = torch.randn(C, 3 * C) * 0.02, torch.zeros(3 * C)
        W[p + "attn.c_proj.weight"], W[p + "attn.c_proj.bias"] = torch.randn(C, C) * std_proj, torch.zeros(C)
        W[p + "ln_2.weight"], W[p + "ln_2.bias"] = torch.ones(C), torch.zeros(C)
        W[p + "mlp.c_fc.weight"], W[p + "mlp.c_fc.bias"] = torch.randn(C, 4 * C) * 0.02, torch.zeros(4 * C)
        W[p + "mlp.c_proj.weight"], W[p + "mlp.c_proj.bias"] = torch.randn(4 * C, C) * std_proj, torch.zeros(C)
    W["ln_f.weight"], W["ln_f.bias"] = torch.ones(C), torch.zeros(C)
    return W, lambda ids: torch_gpt2.forward(W, ids, L, a.n_head)


def llama_model(a):
    """Llama weights with Hugging Face names in HF's order (torch_llama.param_shapes: nn.Linear
    layout [out, in], no lm_head when tied), matrices N(0, 0.02) and RMSNorm gains 1 as
    Trident's declaration initializes them, and the forward pass over them."""
    cfg = torch_llama.LlamaConfig(n_layer=a.n_layer, n_head=a.n_head, n_kv_head=a.n_kv_head,
                                  rope_theta=a.rope_theta, rms_norm_eps=a.norm_eps,
                                  tie_word_embeddings=bool(a.tie))
    W = {}
    for name, shape in torch_llama.param_shapes(cfg, a.n_embd, a.n_inner, a.vocab_size).items():
        W[name] = torch.ones(shape) if len(shape) == 1 else torch.randn(shape) * 0.02
    return W, lambda ids: torch_llama.forward(W, ids, cfg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["gpt2", "llama"], default="gpt2")
    ap.add_argument("--n-layer", type=int, required=True)
    ap.add_argument("--n-head", type=int, required=True)
    ap.add_argument("--n-embd", type=int, required=True)
    ap.add_argument("--n-positions", type=int, required=True)
    ap.add_argument("--vocab-size", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    # Llama only (the C++ side always passes them for --family llama):
    ap.add_argument("--n-kv-head", type=int, default=0)
    ap.add_argument("--n-inner", type=int, default=0)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--norm-eps", type=float, default=1e-5)
    ap.add_argument("--tie", type=int, choices=[0, 1], default=1)
    # bf16: forward and loss under torch.autocast("cpu", dtype=torch.bfloat16), the peer of
    # Trident's --precision bf16 (weights, gradients and AdamW stay fp32 on both sides).
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none")
    a = ap.parse_args()
    if a.family == "llama" and (a.n_kv_head < 1 or a.n_inner < 1):
        ap.error("--family llama needs --n-kv-head and --n-inner (>= 1)")

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    V = a.vocab_size
    W, forward = llama_model(a) if a.family == "llama" else gpt2_model(a)
    for t in W.values():
        t.requires_grad_(True)
    decay = [t for t in W.values() if t.dim() >= 2]
    no_decay = [t for t in W.values() if t.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (a.batch, a.seq), generator=g)
    targets = torch.randint(0, V, (a.batch, a.seq), generator=g)
    params = list(W.values())

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
            logits = forward(ids)
            loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    loss = step()  # warm-up: allocator, thread pool, optimizer state
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "params": sum(t.numel() for t in params), "loss": loss}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        times = []
        for _ in range(int(cmd[1])):
            t0 = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"step_s": times, "loss": loss}), flush=True)


if __name__ == "__main__":
    main()
