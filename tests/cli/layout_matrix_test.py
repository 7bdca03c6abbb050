"""The layout-equivalence matrix (issue 8): for world size 8 and the tiny preset, every
dp x tp x pp layout with product 8, crossed with ZeRO 0 and 3 and the pipeline schedules,
trains 5 steps whose per-step losses and grad norms and whose final weights equal the
single-process run's within bounds derived from fp32 rounding (below). Each row prints its
deviations next to the bounds. The matrix fails if it compared no layout (or, without
TRIDENT_MATRIX_ONLY, fewer rows than it lists).

With a third argument `bf16` it runs --precision bf16 on BF16_ROWS, with the bounds of
equivalence.bf16_loss_factor / bf16_step_factor (the derivation is there) and the weights
compared by their root mean square deviation.

Bounds. A layout changes only the order of floating-point sums (dp adds per-rank gradient
shares, tp adds partial products, micro-batches split the batch). u = 2^-24 (fp32 unit
roundoff). A sum of n terms reassociated differs by ~u*sqrt(n) relative (the roundings are a
random walk), so with B*T = 512 tokens contributing to every gradient element:
  eta = u * sqrt(B*T) = 1.35e-6      relative perturbation of a gradient element per step.
  loss, step k:      k * u * sqrt(V / (B*T)) = k * 8.4e-8 relative: each token's loss carries
                     the softmax's V = 1000-term sum (u * sqrt(V)), the mean over B*T
                     independent tokens divides that by sqrt(B*T); each earlier step adds its
                     own rounding to the weights, which the loss sees at first order.
  grad_norm, step k: k * eta relative (each step's gradients carry eta, the weights the
                     earlier steps' perturbations).
  weights:           lr * (eta * g_rms / eps) per step summed over the steps, with g_rms =
                     grad_norm / sqrt(N) the typical gradient element: AdamW's update
                     m / (sqrt(v) + eps) moves by at most |dg| / eps for a gradient
                     perturbation dg, and dg ~ eta * (the size of the element's summands).
The runs use --eps 1e-6 rather than the default 1e-8: with eps = 1e-8 an element whose
gradient cancels to rounding noise (~1e-8) takes a step of anything up to 2 lr decided by
that noise, the weights then differ by up to lr per step in a few elements and the grad norm
follows them (measured 2.7e-6 relative at step 2 vs 1.4e-8 at step 1), so no bound derived
from the rounding could be tight. Measured here (all 32 rows, eps 1e-6): loss <= 2.6e-9
relative (bound 8.3e-8 at step 1 to 4.2e-7 at step 5), grad norm <= 2.3e-7 relative (bound
1.3e-6 .. 6.7e-6), weights <= 3.0e-6 absolute (bound 2.7e-5 = 0.009 lr for N = 135744);
the old single bounds were 2e-5 (loss), none (grad norm) and 1.5e-4 (weights).

The bounds bite (mutations tried with TRIDENT_MATRIX_ONLY=4,2,1; TRIDENT_MATRIX_MUTATE adds
flags to the layout runs only):
- gradients scaled by 1/8 on multi-rank runs (engine's dloss * 0.125): grad norm 0.876
  relative off at every step, losses 1.7e-5 from step 2 (100x the bound), weights 7e-3;
- one micro-batch's gradient dropped on dp rank 1 (dloss 0 for m = 0): losses 7e-4, grad
  norm 0.18, weights 2.6e-2;
- TRIDENT_MATRIX_MUTATE="--lr 0.0033" (10% more lr): losses 2.3e-4, grad norm 4e-2 from
  step 2, weights 1.3e-2."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, finish, mpirun, read_metrics, run, synthetic_tokens, trident, write_shard  # noqa: E402
import equivalence as eq  # noqa: E402
import safetensors_stdlib as st  # noqa: E402

STEPS = 5
BATCH, SEQ, VOCAB = 16, 32, 1000
# --precision (argv[3], default fp32): bf16 runs a subset of the rows with the bounds widened by
# equivalence.bf16_loss_factor and bf16_step_factor (derived there) and AdamW eps 1e-4, not 1e-6: eps must sit above
# the gradient noise a layout causes (the fp32 argument above), and in bf16 an element's gradient
# moves by up to a bf16 step of its summands, 2^-7 x g_rms ~ 1e-5 here, not by fp32's 1e-8.
# (With eps 1e-6, llama-tiny's grad norm drifted 1.1e-3 relative by step 3 at dp8, tp1: the
# noise-level elements of rare tokens' embedding rows took lr-sized steps of either sign.)
PRECISION = sys.argv[3] if len(sys.argv) > 3 else "fp32"
WIDEN_LOSS = eq.bf16_loss_factor(BATCH, SEQ) if PRECISION == "bf16" else 1.0
WIDEN_STEP = eq.bf16_step_factor(BATCH, SEQ) if PRECISION == "bf16" else 1.0
LR, EPS = 3e-3, (1e-4 if PRECISION == "bf16" else eq.EPS)


def loss_bound(k):  # relative, after k steps (k = 1 is the first step's loss)
    return WIDEN_LOSS * eq.loss_bound(k, BATCH, SEQ, VOCAB)


def grad_norm_bound(k):  # relative
    return WIDEN_STEP * eq.grad_norm_bound(k, BATCH, SEQ)


def weight_bound(ref_grad_norms, n_params):  # absolute, after all steps
    return WIDEN_STEP * eq.weight_bound(ref_grad_norms, n_params, LR, BATCH, SEQ, EPS)


# The model families' rows (argv[2]): GPT-2's tiny preset runs every layout; Llama (grouped-query,
# untied head; and tied with multi-head attention, from a Hugging Face config.json) runs the core
# rows: dp, tp inside the kv heads (tp 2) and beyond them (tp 4: each key/value head replicated on
# two ranks), pipelines with and without a tied head, interleaving, ZeRO-3, 3D.
LLAMA_ROWS = [(8, 1, 1, 0, "1f1b"), (8, 1, 1, 3, "1f1b"), (4, 2, 1, 0, "1f1b"), (2, 4, 1, 3, "1f1b"),
              (2, 2, 2, 0, "1f1b"), (2, 2, 2, 3, "gpipe"), (1, 4, 2, 0, "interleaved"), (1, 1, 8, 0, "1f1b")]
# Mixtral (4 layers of 4 experts, top-2, aux loss on): Llama's rows with 4 pipeline stages at most
# (one layer each) instead of 8.
# Expert parallelism (a 6th entry, ep; 1 when absent): the ep group out of dp, with tp and pp;
# then ZeRO 1-3 with ep (dense state sharded over dp, expert state over edp = dp / ep): dp 2 x
# ep 2 (edp 1: each expert's state whole on its one holder) at every stage, dp 4 x ep 2 (edp 2:
# expert shards), and with tp 2 or pp 2 added. A row's world is dp x tp x pp (4 or 8 ranks).
MIXTRAL_ROWS = [r for r in LLAMA_ROWS if r[2] <= 4] + [(1, 2, 4, 0, "1f1b")] + [
    (8, 1, 1, 0, "1f1b", 4), (8, 1, 1, 0, "1f1b", 2), (4, 2, 1, 0, "1f1b", 4), (4, 1, 2, 0, "1f1b", 2),
    (2, 2, 2, 0, "gpipe", 2), (2, 1, 4, 0, "1f1b", 2)] + [
    (2, 1, 1, 1, "1f1b", 2), (2, 1, 1, 2, "1f1b", 2), (2, 1, 1, 3, "1f1b", 2), (4, 1, 1, 3, "1f1b", 2),
    (4, 2, 1, 2, "1f1b", 2), (2, 2, 1, 3, "1f1b", 2), (2, 1, 2, 1, "1f1b", 2), (4, 1, 2, 3, "interleaved", 2)]
# Mixtral with the aux-free router bias updating (rate 0.01, so it moves routing within 5 steps)
# and a capacity that drops (factor 1.0): dp, ep, tp and pp with micro-batches. The bias is in the
# saved weights, so the weight check compares it too (equal counts give equal bias, bitwise).
MIXTRAL_BALANCED_ROWS = [(8, 1, 1, 0, "1f1b"), (8, 1, 1, 0, "1f1b", 2), (4, 2, 1, 0, "1f1b"),
                         (4, 1, 2, 0, "1f1b", 2), (2, 2, 2, 0, "gpipe", 2)]
MIXTRAL_BALANCED_FLAGS = ["--moe-bias-update-rate", "0.01", "--moe-capacity-factor", "1.0"]
# Mixtral-tiny with DeepSeek-V3's layer mix (layer 0 dense, first_k_dense 1; one shared expert in
# layers 1-3): the shared experts and the dense layer are dense parameters (replicated over ep,
# split by tp), pipeline stages mix dense and MoE layers (pp 2: layers 0-1 | 2-3; pp 4: a dense
# stage), and the aux loss averages over the 3 MoE layers. The aux-free bias updates too (one row
# per MoE layer: layers 1-3; the dense-only stage of pp 4 holds the table but routes nothing).
DENSE_SHARED_ROWS = [(8, 1, 1, 0, "1f1b", 2), (4, 2, 1, 0, "1f1b"), (4, 1, 2, 0, "1f1b"), (2, 2, 2, 0, "gpipe", 2),
                     (2, 1, 4, 0, "1f1b", 2)]
DENSE_SHARED_FLAGS = ["--moe-first-k-dense", "1", "--moe-shared-experts", "1", "--moe-bias-update-rate", "0.01"]
# Mixtral-tiny with DeepSeek-V3's router: sigmoid scores, the top-k weights normalised and scaled
# by routed_scaling_factor 2.5, group-limited routing (the 4 experts in 2 groups, the best group
# only: a token's 2 experts are one group's pair), and the aux-free bias moving the choice. The
# z-loss is a softmax router's and stays off. dp, ep (a group per ep rank and split over ranks),
# tp, pp with micro-batches, ZeRO.
DEEPSEEK_ROUTER_ROWS = [(8, 1, 1, 0, "1f1b"), (8, 1, 1, 0, "1f1b", 2), (4, 1, 1, 0, "1f1b", 4), (4, 2, 1, 0, "1f1b"),
                        (4, 1, 2, 0, "1f1b", 2), (2, 2, 2, 0, "gpipe", 2), (2, 1, 1, 3, "1f1b", 2)]
DEEPSEEK_ROUTER_FLAGS = ["--moe-scoring", "sigmoid", "--moe-routed-scaling", "2.5", "--moe-groups", "2",
                         "--moe-topk-groups", "1", "--moe-bias-update-rate", "0.01"]
LLAMA_TIED_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 88,
    "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64,
    "vocab_size": 1000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
    "hidden_act": "silu"}


# bf16 rows: dp with and without ZeRO-3, tp (inside and beyond Llama's kv heads), a pipeline,
# 3D, and an 8-stage pipeline: every kind of reordered sum once.
BF16_ROWS = [(8, 1, 1, 0, "1f1b"), (8, 1, 1, 3, "1f1b"), (4, 2, 1, 0, "1f1b"), (2, 4, 1, 3, "1f1b"),
             (2, 2, 2, 0, "1f1b"), (1, 1, 8, 0, "1f1b")]


def layouts(model="tiny"):
    if PRECISION == "bf16":
        return BF16_ROWS
    if model == "mixtral-tiny":
        return MIXTRAL_ROWS
    if model == "mixtral-tiny-balanced":
        return MIXTRAL_BALANCED_ROWS
    if model == "mixtral-tiny-dense-shared":
        return DENSE_SHARED_ROWS
    if model == "mixtral-tiny-deepseek-router":
        return DEEPSEEK_ROUTER_ROWS
    if model != "tiny":
        return LLAMA_ROWS
    rows = []
    for dp, tp, pp in [(8, 1, 1), (4, 2, 1), (2, 4, 1), (4, 1, 2), (2, 2, 2), (1, 4, 2), (2, 1, 4),
                       (1, 2, 4), (1, 1, 8)]:
        zeros = [0, 3] if dp > 1 else [0]
        schedules = ["1f1b"] if pp == 1 else ["gpipe", "1f1b"] + (["interleaved"] if 2 * pp <= 8 else [])
        for z in zeros:
            for s in schedules:
                rows.append((dp, tp, pp, z, s))
    return rows


def max_rel(got, want):
    return max(abs(a - b) / abs(b) for a, b in zip(got, want))


def main():
    build = sys.argv[1]
    T = trident(build)
    only = os.environ.get("TRIDENT_MATRIX_ONLY")  # e.g. "2,2,2" to run one layout while debugging
    mutation = os.environ.get("TRIDENT_MATRIX_MUTATE", "").split()  # extra flags for the layouts
    model = sys.argv[2] if len(sys.argv) > 2 else "tiny"
    rows = [r if len(r) == 6 else r + (1,) for r in layouts(model)]
    # TRIDENT_MATRIX_ONLY: "dp,tp,pp" (",epN" with ep; ",zZ" picks one ZeRO stage of those rows)
    rows = [r for r in rows if not only or only in (f"{r[0]},{r[1]},{r[2]}" + (f",ep{r[5]}" if r[5] > 1 else ""),
                                                    f"{r[0]},{r[1]},{r[2]}" + (f",ep{r[5]}" if r[5] > 1 else "") + f",z{r[3]}")]
    compared = 0
    with tempfile.TemporaryDirectory() as d:
        model_arg = model
        if model == "llama-tiny-tied":
            import json
            model_arg = f"{d}/llama_tied.json"
            with open(model_arg, "w") as f:
                json.dump(LLAMA_TIED_CONFIG, f)
        print(f"model: {model}, precision {PRECISION} (bounds: loss x {WIDEN_LOSS:.1f}, grad norm and weights "
              f"x {WIDEN_STEP:.1f})")
        write_shard(f"{d}/syn_train.bin", synthetic_tokens(30000, VOCAB, 11))
        write_shard(f"{d}/syn_val.bin", synthetic_tokens(3000, VOCAB, 12))
        common = ["train", "--model", model_arg, "--data", f"{d}/syn", "--batch-size", str(BATCH), "--seq-len",
                  str(SEQ), "--steps", str(STEPS), "--lr", str(LR), "--lr-schedule", "constant", "--eps", str(EPS),
                  "--eval-every", "0", "--seed", "5", "--log-every", "100"]
        common += ["--precision", PRECISION]
        if model == "mixtral-tiny-balanced":
            common[common.index(model_arg)] = "mixtral-tiny"
            common += MIXTRAL_BALANCED_FLAGS
        if model == "mixtral-tiny-dense-shared":
            model_arg = "mixtral-tiny"
            common[2] = model_arg
            common += DENSE_SHARED_FLAGS
        if model == "mixtral-tiny-deepseek-router":
            model_arg = "mixtral-tiny"
            common[2] = model_arg
            common += DEEPSEEK_ROUTER_FLAGS
        elif model.startswith("mixtral-tiny"):
            common += ["--moe-z-loss-coef", "0.01"]  # the router z-loss on too: in the objective, and compared
        rc, _, err = run([T] + common + ["--ckpt-dir", f"{d}/ref", "--metrics", f"{d}/ref.jsonl"])
        check("single-process reference run", rc == 0, err[-1500:] if rc else "")
        if rc:
            return
        ref = read_metrics(f"{d}/ref.jsonl")
        ref_loss = [m["loss"] for m in ref]
        ref_norm = [m["grad_norm"] for m in ref]
        ref_w = st.load(f"{d}/ref/step_{STEPS:08d}/model.safetensors")
        n_params = sum(len(v) for v in ref_w.values())
        w_bound = weight_bound(ref_norm, n_params)
        print(f"reference losses {ref_loss}\nreference grad norms {ref_norm}")
        print(f"bounds: loss {[f'{loss_bound(k):.1e}' for k in range(1, STEPS + 1)]} relative, grad norm "
              f"{[f'{grad_norm_bound(k):.1e}' for k in range(1, STEPS + 1)]} relative, weights {w_bound:.2e} "
              f"absolute (N = {n_params})")
        print(f"{'dp':>3} {'tp':>3} {'pp':>3} {'ep':>3} {'zero':>4} {'schedule':>11} {'M':>2} | "
              f"{'loss rel dev':>12} {'norm rel dev':>12} {'weight abs dev':>14}")
        for dp, tp, pp, z, s, ep in rows:
            tag = f"dp{dp}_tp{tp}_pp{pp}_z{z}_{s}" + (f"_ep{ep}" if ep > 1 else "")
            # Micro-batches: 2 per dp rank without pipelining, 4 with (interleaving needs M % pp == 0).
            m = 2 if pp == 1 else (pp if s == "interleaved" else 4)
            extra = ["--dp", str(dp), "--tp", str(tp), "--pp", str(pp), "--zero", str(z),
                     "--schedule", s, "--micro-batches", str(m)]
            if s == "interleaved":
                extra += ["--virtual-stages", "2"]
            if ep > 1:
                extra += ["--ep", str(ep)]
            rc, _, err = run([mpirun(), "-n", str(dp * tp * pp), T] + common + extra + mutation +
                             ["--ckpt-dir", f"{d}/{tag}", "--metrics", f"{d}/{tag}.jsonl"],
                             env={"TRIDENT_COMM_TIMEOUT": "120"})
            if rc != 0:
                check(f"layout {tag} runs", False, f"rc={rc}: {err.strip()[-1500:]}")
                continue
            got = read_metrics(f"{d}/{tag}.jsonl")
            loss = [x["loss"] for x in got]
            norm = [x["grad_norm"] for x in got]
            got_w = st.load(f"{d}/{tag}/step_{STEPS:08d}/model.safetensors")
            w_dev, where = st.max_abs_diff(got_w, ref_w)
            n = min(len(loss), STEPS)
            loss_dev, norm_dev = max_rel(loss[:n], ref_loss[:n]), max_rel(norm[:n], ref_norm[:n])
            print(f"{dp:>3} {tp:>3} {pp:>3} {ep:>3} {z:>4} {s:>11} {m:>2} | {loss_dev:>12.2e} {norm_dev:>12.2e} "
                  f"{w_dev:>14.2e}  ({where})", flush=True)
            check(f"layout {tag} ran {STEPS} steps", len(loss) == STEPS, f"{len(loss)} metrics lines")
            bad_loss = [k + 1 for k in range(n) if abs(loss[k] - ref_loss[k]) > loss_bound(k + 1) * abs(ref_loss[k])]
            bad_norm = [k + 1 for k in range(n) if abs(norm[k] - ref_norm[k]) > grad_norm_bound(k + 1) * ref_norm[k]]
            check(f"layout {tag} losses", not bad_loss, f"steps {bad_loss}: {loss} vs {ref_loss}")
            check(f"layout {tag} grad norms", not bad_norm, f"steps {bad_norm}: {norm} vs {ref_norm}")
            if PRECISION == "bf16":
                # The bound is on a typical element; the rare operand whose rounding flipped moves
                # by a whole bf16 step, so the largest deviation is heavy-tailed (an element near
                # eps takes an lr-sized step of either sign) and the root mean square is compared.
                w_rms = st.rms_diff(got_w, ref_w)
                print(f"    weights rms dev {w_rms:.2e} (bound {w_bound:.2e}), max {w_dev:.2e}")
                check(f"layout {tag} weights (rms)", w_rms <= w_bound, f"{w_rms:.2e} > {w_bound:.2e}")
            else:
                check(f"layout {tag} weights", w_dev <= w_bound, f"{w_dev:.2e} > {w_bound:.2e} at {where}")
            # The aux-free router bias moves by +-rate from integer counts: equal bitwise, and moved.
            bias = [k for k in ref_w if k.endswith(".gate.e_score_correction_bias")]
            if bias:
                check(f"layout {tag} router bias (bitwise)", all(got_w[k] == ref_w[k] for k in bias)
                      and any(x != 0 for k in bias for x in ref_w[k]),
                      f"{[list(got_w[k]) for k in bias]} vs {[list(ref_w[k]) for k in bias]}")
            if "aux_loss" in ref[0]:
                # MoE: the load-balancing loss within the loss's bound. One token moved from expert
                # e to e' changes it by E / (k T) |P_e' - P_e| / (layers * sequences), ~1e-5
                # relative here for a 1% difference in P, beyond the bound (8e-8 at step 1), so
                # equal aux losses also mean equal routing (short of a routing hash).
                aux, ref_aux = [x["aux_loss"] for x in got][:n], [m["aux_loss"] for m in ref][:n]
                bad_aux = [k + 1 for k in range(n) if abs(aux[k] - ref_aux[k]) > loss_bound(k + 1) * abs(ref_aux[k])]
                print(f"    aux loss rel dev {max_rel(aux, ref_aux):.2e}")
                check(f"layout {tag} aux losses", not bad_aux, f"steps {bad_aux}: {aux} vs {ref_aux}")
                if "z_loss" in ref[0]:
                    z, ref_z = [x["z_loss"] for x in got][:n], [m["z_loss"] for m in ref][:n]
                    bad_z = [k + 1 for k in range(n) if abs(z[k] - ref_z[k]) > loss_bound(k + 1) * abs(ref_z[k])]
                    print(f"    z-loss rel dev {max_rel(z, ref_z):.2e}")
                    check(f"layout {tag} z-losses", not bad_z, f"steps {bad_z}: {z} vs {ref_z}")
                # Per-layer expert load (fewest / most tokens any expert got): integers, equal in
                # every layout iff every layer's routing histogram is, and k x tokens in all.
                load = [x["expert_load"] for x in got][:n]
                ref_load = [m["expert_load"] for m in ref][:n]
                check(f"layout {tag} expert load", load == ref_load, f"{load} vs {ref_load}")
                # Which token positions chose which experts (kept or dropped), per MoE layer: a
                # hash summed exactly over micro-batches and ranks, so equal iff routing is.
                hashes = [x["routing_hash"] for x in got][:n]
                ref_hashes = [m["routing_hash"] for m in ref][:n]
                check(f"layout {tag} routing hash", hashes == ref_hashes and
                      len(ref_hashes[0]) == len(ref_load[0]["max"]), f"{hashes} vs {ref_hashes}")
                if "dropped_fraction" in ref[0]:  # a ratio of integer counts: equal exactly
                    dr, ref_dr = [x["dropped_fraction"] for x in got][:n], [m["dropped_fraction"] for m in ref][:n]
                    print(f"    dropped fraction {dr}")
                    check(f"layout {tag} dropped fractions", dr == ref_dr and all(f > 0 for f in ref_dr),
                          f"{dr} vs {ref_dr}")
            compared += 1
    # A matrix that compared nothing (a filter that matches no row, every run failing) fails.
    want = len(layouts(model)) if not only else max(1, len(rows))
    check(f"layouts compared: {compared} of {want}", compared == want and compared >= 1)


if __name__ == "__main__":
    main()
    finish()
