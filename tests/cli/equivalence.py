"""Bounds for comparing a multi-rank run with the single-process run of the same config, derived
in layout_matrix_test.py's docstring (fp32 unit roundoff u; a layout only reorders sums):
loss after k steps k * u * sqrt(V / (B*T)) relative, grad norm k * u * sqrt(B*T) relative,
weights the sum over steps of lr * u * sqrt(B*T) * (grad_norm / sqrt(N)) / eps absolute.
Runs compared with them use AdamW eps 1e-6 (see there why)."""
import math

U = 2.0 ** -24
EPS = 1e-6


def eta(batch, seq):
    return U * math.sqrt(batch * seq)


def loss_bound(k, batch, seq, vocab):  # relative, after k steps (k = 1: the first loss)
    return k * U * math.sqrt(vocab / (batch * seq))


def grad_norm_bound(k, batch, seq):  # relative
    return k * eta(batch, seq)


def weight_bound(ref_grad_norms, n_params, lr, batch, seq, eps=EPS):  # absolute, after all steps
    return sum(lr * eta(batch, seq) * (g / math.sqrt(n_params)) / eps for g in ref_grad_norms)


def deviations(got, ref, batch, seq, vocab):
    """Steps (1-based) whose loss or grad norm is outside the bounds: (bad losses, bad norms)."""
    bad_loss = [k + 1 for k, (a, b) in enumerate(zip(got, ref))
                if abs(a["loss"] - b["loss"]) > loss_bound(k + 1, batch, seq, vocab) * abs(b["loss"])]
    bad_norm = [k + 1 for k, (a, b) in enumerate(zip(got, ref))
                if abs(a["grad_norm"] - b["grad_norm"]) > grad_norm_bound(k + 1, batch, seq) * b["grad_norm"]]
    return bad_loss, bad_norm
