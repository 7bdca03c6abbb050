"""Bounds for comparing a multi-rank run with the single-process run of the same config, derived
in layout_matrix_test.py's docstring (fp32 unit roundoff u; a layout only reorders sums):
loss after k steps k * u * sqrt(V / (B*T)) relative, grad norm k * u * sqrt(B*T) relative,
weights the sum over steps of lr * u * sqrt(B*T) * (grad_norm / sqrt(N)) / eps absolute.
Runs compared with them use AdamW eps 1e-6 (see there why)."""
import json
import math
import os
import subprocess

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


BF16_STEP = 2.0 ** -7  # spacing of bf16 numbers relative to their magnitude (8 significant bits)


def bf16_loss_factor(batch, seq):
    """How much wider the loss bound is for --precision bf16 (every matmul operand rounded to
    bf16, nearest even, products accumulated in fp32). A layout perturbs an fp32 value by a
    relative delta ~ eta (reordered sums). Rounding it to bf16 usually gives the same bf16
    number, but with probability ~ delta / s (s = BF16_STEP) the perturbation crosses a rounding
    boundary and the operand moves by a whole s. Per element the expected change is still
    delta, its root mean square sqrt(delta * s). The loss, a mean over B*T tokens of sums over
    the vocabulary, averages such flips like the fp32 roundings its bound is derived from, so
    that bound grows by sqrt(s / eta)."""
    return math.sqrt(BF16_STEP / eta(batch, seq))


def bf16_step_factor(batch, seq):
    """How much wider the grad-norm and weight bounds are for --precision bf16: s / eta, i.e. a
    whole bf16 step s per element and step where fp32 has eta. The gradient norm is a sum of
    squares dominated by its largest elements (the rows of frequent tokens, the norm gains),
    which do not average the flips, and each such element can carry a whole step; an element's
    AdamW update then moves by lr * s * g_rms / eps at most (the fp32 argument with s for eta)."""
    return BF16_STEP / eta(batch, seq)


def deviations(got, ref, batch, seq, vocab):
    """Steps (1-based) whose loss or grad norm is outside the bounds: (bad losses, bad norms)."""
    bad_loss = [k + 1 for k, (a, b) in enumerate(zip(got, ref))
                if abs(a["loss"] - b["loss"]) > loss_bound(k + 1, batch, seq, vocab) * abs(b["loss"])]
    bad_norm = [k + 1 for k, (a, b) in enumerate(zip(got, ref))
                if abs(a["grad_norm"] - b["grad_norm"]) > grad_norm_bound(k + 1, batch, seq) * b["grad_norm"]]
    return bad_loss, bad_norm


def sgemm_rows_invariant(build_dir):
    """Whether this CPU's fp32 products give a row the same bits at any row count
    (tests/tools/sgemm_rows_probe.cpp). Where they do, dp and pp ranks compute each row's
    activations bitwise as one process does and only the weight gradients' sums reorder; where
    they do not (OpenBLAS's and oneDNN's AVX2 kernels), the activations carry fp32 noise as tp's
    do, so a bf16 run's operands may round differently from the first step on."""
    probe = os.path.join(build_dir, "tests", "tools", "sgemm_rows_probe")
    got = json.loads(subprocess.run([probe], check=True, capture_output=True, text=True,
                                    env=dict(os.environ, OMP_NUM_THREADS="1")).stdout)
    print(f"sgemm rows invariant to the row count here: {got['row_invariant']} "
          f"({got['differing']} of {got['checked']} elements differ)")
    return bool(got["row_invariant"])

