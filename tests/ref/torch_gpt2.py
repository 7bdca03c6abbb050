"""GPT-2 written directly in PyTorch the way Hugging Face's GPT2LMHeadModel computes it
(pre-LN, Conv1D weights stored [in, out], gelu_new, tied LM head). The numerical reference
for Trident's tests; weights come from a dict of tensors with Hugging Face names."""
import math

import torch
import torch.nn.functional as F


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def forward(W, ids, n_layer, n_head, gelu=gelu_new):
    """Returns logits (B, T, V) for token ids (B, T). `gelu` is replaceable so tests can plant a
    wrong activation and see their checks fail."""
    B, T = ids.shape
    wte = W["wte.weight"]
    C = wte.shape[1]
    hs = C // n_head
    x = wte[ids] + W["wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(n_layer):
        p = f"h.{l}."
        h = F.layer_norm(x, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], 1e-5)
        qkv = h @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, n_head, hs).transpose(1, 2)
        k = k.view(B, T, n_head, hs).transpose(1, 2)
        v = v.view(B, T, n_head, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + (y @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"])
        h = F.layer_norm(x, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], 1e-5)
        h = gelu(h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"])
        x = x + (h @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (C,), W["ln_f.weight"], W["ln_f.bias"], 1e-5)
    return x @ wte.t()


def loss_fn(W, ids, targets, n_layer, n_head, gelu=gelu_new):
    logits = forward(W, ids, n_layer, n_head, gelu)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lr_at(step, max_lr, min_lr, warmup, total, kind="cosine"):
    """Trident's schedule (optim/lr_schedule.cpp), written independently."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if kind == "constant":
        return max_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
