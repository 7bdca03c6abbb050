"""Error bounds for Trident's fp32 arithmetic against a float64 reference, derived once here
and used by every reference test (the derivation is the comment; the tests cite it).

u = 2^-24 is fp32's unit roundoff. A length-n dot product or sum accumulated in fp32 has a
relative error that behaves like a random walk of n roundings, ~sqrt(n) u (Higham & Mary,
"A new approach to probabilistic rounding error analysis", 2019; the worst case n u is never
approached by BLAS's blocked sums). Along the forward pass the errors of consecutive stages
add: a GPT-2 of L layers has D = 2L + 1 matmul stages on every path (attention and MLP per
layer, then the LM head), each with its own LayerNorm / softmax / GELU whose error is of the
same order. So a logit (relative to the logits' scale) is off by at most

    forward_rel = D * sqrt(n) * u,   n = the longest reduction (4C in the MLP, or B*T tokens)

Backward runs every stage twice (the input and the weight gradient) through the same depth:
backward_rel = 2 * forward_rel. Over S optimizer steps each step's rounding adds to the
weights once, so step s (0-based) carries (s + 1) such errors: losses within
(s + 1) * forward_rel relative, grad norms within (s + 1) * backward_rel. A weight tensor's
total update (final - initial) is the sum of S Adam steps each off by backward_rel in
direction: within S * backward_rel of the update's norm. The one exception is an element
whose exact gradient is zero (the key bias: adding a constant to every score of a softmax
row changes nothing), which Adam steps by ~lr in a direction set by rounding noise alone; it
is checked against Adam's budget sum(lr) instead (update_exempt below).

What these bounds catch (gpt_torch_reference_test.py plants each bug on the PyTorch side and
requires the checks to fail; measured): exact-erf GELU instead of gelu_new fails logits (1.2e-5), gradients (8e-5) and the final
weights (3.5e-4); weight decay dropped fails the losses (2.2e-4) and the weights (7.6e-3); a
learning rate 10% off at one step fails the losses (1.1e-3) and the weights (2.3e-2).

Llama (Fp32Bounds.llama, used by llama_torch_reference_test.py) has the same depth, D = 2L + 1
(attention and SwiGLU MLP per layer, then the LM head; RMSNorm, softmax and SiLU in between),
but other reduction lengths: the MLP's down projection sums over intermediate_size (not 4C),
the LM head's input gradient over the vocabulary, the q/k/v/gate/up projections over C, the
attention over T and every weight gradient over the B*T tokens of a step; n is the longest.
RoPE adds one error the GPT-2 derivation has no counterpart for: fp32 computes the angle
t * theta^(-2i/HD) with three roundings (the power, the reciprocal, the product), so pair i of
position t is rotated by an angle off by <= 3 t theta^(-2i/HD) u radians, which is the relative
error it puts on that pair. Pair 0's angle is exact (inv_freq = 1, t an integer); the worst
other pair is i = 1 at t = T - 1. q and k are both rotated in each of L layers:

    rope_rel = 2 L * 3 (T - 1) theta^(-2/HD) u,  added to forward_rel (backward doubles both)."""
import math

import numpy as np

U = 2.0 ** -24


class Fp32Bounds:
    def __init__(self, n_layer, n_embd, tokens_per_step, reduction=None, rope_rel=0.0):
        """GPT-2's bounds; `reduction` and `rope_rel` are for other families (see llama())."""
        self.depth = 2 * n_layer + 1
        self.reduction = max(4 * n_embd, tokens_per_step) if reduction is None else reduction
        self.rope_rel = rope_rel
        self.forward_rel = self.depth * math.sqrt(self.reduction) * U + rope_rel
        self.backward_rel = 2.0 * self.forward_rel

    @classmethod
    def llama(cls, n_layer, hidden, intermediate, vocab, head_dim, rope_theta, batch_size, seq_len):
        """Llama's bounds (derivation in the module docstring)."""
        reduction = max(hidden, intermediate, vocab, seq_len, batch_size * seq_len)
        rope_rel = 2 * n_layer * 3 * (seq_len - 1) * rope_theta ** (-2.0 / head_dim) * U
        return cls(n_layer, hidden, batch_size * seq_len, reduction=reduction, rope_rel=rope_rel)

    def loss_rel(self, step):
        return (step + 1) * self.forward_rel

    def grad_norm_rel(self, step):
        return (step + 1) * self.backward_rel

    def update_rel(self, steps):
        return steps * self.backward_rel

    def describe(self):
        rope = f" (of which RoPE angles {self.rope_rel:.2e})" if self.rope_rel else ""
        return (f"u=2^-24, depth {self.depth}, reduction {self.reduction}: forward {self.forward_rel:.2e}{rope}, "
                f"backward {self.backward_rel:.2e}")


def rel_err(a, b):
    """max |a - b| / max |b|: error relative to the tensor's scale."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def update_exempt(name, n_embd):
    """Indices of a tensor whose exact gradient is zero (see the module docstring), or None."""
    if name.endswith("attn.c_attn.bias"):
        return slice(n_embd, 2 * n_embd)
    return None


def compare_updates(initial, trained, reference, n_embd, steps, bounds, lr_budget):
    """Per tensor: |(trained - initial) - (reference - initial)| / |reference - initial| against
    bounds.update_rel(steps), the zero-gradient elements against lr_budget. Returns
    (worst_rel, worst_name, worst_exempt_abs, failures)."""
    worst, worst_name, worst_exempt, bad = 0.0, "", 0.0, []
    for name, ref in reference.items():
        ref = np.asarray(ref, dtype=np.float64).reshape(-1)
        got = np.asarray(trained[name], dtype=np.float64).reshape(-1)
        init = np.asarray(initial[name], dtype=np.float64).reshape(-1)
        keep = np.ones(ref.shape, dtype=bool)
        exempt = update_exempt(name, n_embd)
        if exempt is not None:
            keep[exempt] = False
            dev = float(np.abs(got[~keep] - ref[~keep]).max())
            worst_exempt = max(worst_exempt, dev)
            if dev > lr_budget:
                bad.append(f"{name}[zero-gradient part] moved {dev:.2e} > sum(lr) {lr_budget:.2e}")
        du_ref, du_got = ref[keep] - init[keep], got[keep] - init[keep]
        e = float(np.linalg.norm(du_got - du_ref) / max(np.linalg.norm(du_ref), 1e-30))
        if e > worst:
            worst, worst_name = e, name
        if e > bounds.update_rel(steps):
            bad.append(f"{name} update off by {e:.2e} > {bounds.update_rel(steps):.2e}")
    return worst, worst_name, worst_exempt, bad
