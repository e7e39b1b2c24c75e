"""The chunked token pass (lpreg/native/tokens.py): chunked = unchunked, micro-batching never changes the loss, the sparse
forward KL equals the dense one, regularizers declare their own targets, padding never reaches the head."""

import math
from dataclasses import replace

import pytest
import torch
from conftest import compose_cfg

from lpreg.core.losses import REGULARIZERS, LossInputs, PPOClipConfig, aggregate, pg_metrics, register
from lpreg.core.losses.lpreg import forward_kl, sparse_forward_kl
from lpreg.core.metrics import token_entropy
from lpreg.core.proxy import proxy_log_prob, proxy_support, tail_mass
from lpreg.core.reduce import Mean
from lpreg.native import decision, tokens, trainer
from lpreg.native.models import build_tiny_model
from lpreg.native.rollout import Generation

B, P, R, V = 8, 6, 9, 64


def tiny_model():
    torch.manual_seed(0)
    cfg = compose_cfg().model
    return build_tiny_model(cfg, V, seed=0).double()


def rollout(seed: int = 0) -> tuple[Generation, torch.Tensor]:
    """A rollout of B responses with ragged prompts (left padding) and responses (right padding), and advantages."""
    g = torch.Generator().manual_seed(seed)
    p_len = torch.randint(2, P + 1, (B,), generator=g)
    r_len = torch.randint(1, R + 1, (B,), generator=g)
    r_len[0] = R
    prompt = torch.randint(3, V, (B, P), generator=g)
    pmask = (torch.arange(P)[None] >= P - p_len[:, None]).long()
    resp = torch.randint(3, V, (B, R), generator=g)
    rmask = (torch.arange(R)[None] < r_len[:, None]).double()
    gen = Generation(prompt * pmask, pmask, resp * rmask.long(), rmask, torch.ones(B, dtype=torch.bool), [""] * B)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[:2] = 0.0  # a zero-advantage group
    return gen, adv[:, None] * rmask


def dense_logits(model, gen: Generation) -> torch.Tensor:
    """The unchunked reference: full logits ``[B, R, V]`` of the whole rollout through the model's own head."""
    ids = torch.cat([gen.prompt_ids, gen.response_ids], 1)
    attn = torch.cat([gen.prompt_mask, torch.ones_like(gen.response_ids)], 1)
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, P - 1: P - 1 + R]


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunked_pass_equals_the_unchunked_computation(chunk):
    model, (gen, _) = tiny_model(), rollout()
    cfg = replace(REGULARIZERS.get("lpreg").config(), divergence="forward_kl")
    fns = tokens.old_pass_fns(0.02, 0.1, REGULARIZERS.get("lpreg").old_targets(cfg))
    with torch.no_grad():
        mb = tokens.plan(gen, slice(0, B), 0)[0]
        got = tokens.per_token(model, mb, 0.7, chunk, fns)
        z = dense_logits(model, gen)[gen.response_mask > 0] / 0.7  # [N, V]
    y = gen.response_ids[gen.response_mask > 0]
    want = {"log_prob": torch.log_softmax(z, -1).gather(-1, y[:, None])[:, 0], "entropy": token_entropy(z),
            "tail_mass": tail_mass(z, 0.02), "proxy_log_prob": proxy_log_prob(z, y, 0.02)}
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-9, atol=1e-9, msg=k)
    # the sparse proxy holds exactly the dense proxy's mass: the forward KL of the policy against itself is -log Z
    logp = torch.log_softmax(z, -1).gather(-1, got["proxy_idx"])
    torch.testing.assert_close(sparse_forward_kl(got["proxy_q"], logp), forward_kl(z, z, 0.02, "minp"))


SPARK_ID = 5  # a token standing in for a task's spark, so that the positive control has its target


def minibatch_loss_and_grad(name: str, changes: dict, budget: int, chunk: int, model=None):
    """The trainer's update of one on-policy mini-batch (lr 0, no clipping): its loss and the parameter gradient."""
    model = model or tiny_model()
    cfg = compose_cfg([f"regularizer={name}", *(f"regularizer.{k}={v}" for k, v in changes.items()),
                       f"trainer.max_tokens_per_micro_batch={budget}", f"trainer.token_chunk={chunk}",
                       "trainer.mini_batches=1", "trainer.grad_clip=1e9"])  # the test optimizer has lr 0
    gen, adv = rollout()
    reg = REGULARIZERS.get(name)
    minis = trainer.micro_batches(gen, cfg)
    olds = trainer.old_pass(model, minis, tokens.old_pass_fns(0.02, 0.1, reg.old_targets(cfg.regularizer)), cfg)
    roll = reg.rollout_targets(cfg.regularizer, trainer.rollout_flat(olds, "log_prob"), adv[gen.response_mask > 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(1)  # Clip-Cov draws its tokens from torch's RNG
    new_fns = {**reg.new_targets(cfg.regularizer), **decision.targets(SPARK_ID)}  # a decision point for the control
    m = trainer.update(model, opt, minis, olds, adv, roll, reg, cfg, new_fns)
    return m["loss/total"], torch.cat([p.grad.flatten() for p in model.parameters()]), len(minis[0]), m


def padded_budget(n_micro: int) -> int:
    """A token budget that cuts the test rollout into ``n_micro`` micro-batches."""
    for budget in range(P + R, B * (P + R) + 1):
        gen, _ = rollout()
        if len(tokens.plan(gen, slice(0, B), budget)) == n_micro:
            return budget
    raise AssertionError(f"no budget gives {n_micro} micro-batches")


@pytest.mark.parametrize("name,changes", [("none", {}), ("entropy", {"entropy_coef": 0.3}), ("clip_higher", {}),
                                          ("gspo", {}), ("lpreg", {"scope": "batch", "rho": 0.9, "kappa": 0.3})])
def test_micro_batching_never_changes_the_loss_the_gradient_or_a_diagnostic(name, changes):
    """1, 2 and 5 micro-batches of one update: the same loss, gradient and every logged diagnostic (counts summed,
    token means over the whole mini-batch, maxima: lpreg/core/reduce.py)."""
    results = {n: minibatch_loss_and_grad(name, changes, padded_budget(n) if n > 1 else 0, 7) for n in (1, 2, 5)}
    assert [r[2] for r in results.values()] == [1, 2, 5]
    one = results[1][3]
    for n in (2, 5):
        assert math.isclose(results[n][0], results[1][0], rel_tol=1e-9, abs_tol=1e-12), (name, n)
        torch.testing.assert_close(results[n][1], results[1][1], rtol=1e-8, atol=1e-12)
        assert set(results[n][3]) == set(one)
        for key, value in one.items():
            other = results[n][3][key]
            assert (math.isnan(value) and math.isnan(other)) or math.isclose(other, value, rel_tol=1e-9,
                                                                              abs_tol=1e-12), (name, n, key)
    assert results[1][1].abs().sum() > 0
    if name == "lpreg":
        assert one["lpreg/regularized"] > 1 and one["lpreg/candidates"] > 1  # counts that a mean would have cut


@pytest.mark.parametrize("name", sorted(r.name for r in REGULARIZERS.entries()))
def test_every_regularizer_gives_the_same_loss_and_gradient_for_any_chunk(name):
    changes = {"lpreg": {"rho": 0.3, "divergence": "forward_kl"}, "kl_cov": {"k_percent": 20.0},
               "clip_cov": {"clip_ratio": 0.2}, "entropy": {"entropy_coef": 0.3}}.get(name, {})
    base = minibatch_loss_and_grad(name, changes, 0, 10_000)
    for chunk in (1, 7):
        loss, grad, _, _ = minibatch_loss_and_grad(name, changes, 0, chunk)
        assert math.isclose(loss, base[0], rel_tol=1e-9, abs_tol=1e-12), (name, chunk)
        torch.testing.assert_close(grad, base[1], rtol=1e-8, atol=1e-12)


def test_lpreg_forward_kl_sparse_target_equals_the_dense_divergence():
    g = torch.Generator().manual_seed(3)
    z_old = torch.randn(40, V, generator=g, dtype=torch.float64) * 3
    z_old[:5] = 0.01 * z_old[:5]  # nearly flat rows: many survivors, more than 1/κ
    z = (z_old + 0.5 * torch.randn(40, V, generator=g, dtype=torch.float64)).requires_grad_(True)
    idx, q = proxy_support(z_old, 0.02)
    assert idx.shape[1] > 50  # the flat rows keep more than ⌈1/κ⌉ survivors, and all of them are kept
    sparse = sparse_forward_kl(q, torch.log_softmax(z, -1).gather(-1, idx))
    (g_sparse,) = torch.autograd.grad(sparse.sum(), z)
    dense = forward_kl(z, z_old, 0.02, "minp")
    (g_dense,) = torch.autograd.grad(dense.sum(), z)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-10, atol=1e-12)


@pytest.fixture
def max_logit_regularizer():
    """A regularizer defined in the test, with a per-token target of its own (from the current logits): it only
    touches its own code, as lpreg/core/losses documents."""
    from dataclasses import dataclass

    from lpreg.harness.config import register_configs

    @dataclass
    class MaxLogitConfig(PPOClipConfig):
        name: str = "test_max_logit"
        coef: float = 0.1

    def targets(cfg):
        return {"max_logit": lambda logits, tokens, old: logits.max(-1).values}

    @register("test_max_logit", MaxLogitConfig, label="test", color="#000000", new_targets=targets)
    def loss(inp: LossInputs, cfg):
        reg = cfg.coef * aggregate(inp.new["max_logit"], inp.response_mask, cfg.loss_agg, inp.norm)
        pg = aggregate(-inp.advantages * torch.exp(inp.log_prob - inp.old_log_prob), inp.response_mask, cfg.loss_agg,
                       inp.norm)
        metrics = pg_metrics(pg, reg, Mean(0.0, float(inp.response_mask.sum())))
        values = inp.new["max_logit"][inp.response_mask > 0]
        metrics["test/max_logit"] = Mean(values.sum().item(), float(values.numel()))
        return pg + reg, metrics

    register_configs()
    yield "test_max_logit"
    del REGULARIZERS._items["test_max_logit"]


def test_a_regularizer_declares_a_new_target_without_touching_the_trainer(max_logit_regularizer, tmp_path):
    from test_trainer import read_jsonl, run_train

    cfg = compose_cfg([f"regularizer={max_logit_regularizer}", "trainer.steps=1", "trainer.prompts_per_step=4",
                       "eval.at_start=false", "eval.every=0", "eval.samples=0"])
    run_train(cfg, tmp_path)
    row = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert row["test/max_logit"] > 0 and row["loss/reg"] > 0


def test_no_padding_reaches_the_head_and_on_policy_lpreg_adds_no_forward(monkeypatch):
    model = tiny_model()
    rows, decoder_calls = [], []
    model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    real_hidden = tokens.hidden
    monkeypatch.setattr(tokens, "hidden", lambda *a, **k: decoder_calls.append(1) or real_hidden(*a, **k))
    loss, grad, _, _ = minibatch_loss_and_grad("lpreg", {"rho": 0.3}, 0, 7, model=model)
    gen, _ = rollout()
    n = int(gen.response_mask.sum())
    assert len(decoder_calls) == 2  # one no-grad pass of π_old (old log-probs, metrics, proxy) + one training pass
    assert sum(rows) == 3 * n  # old pass + update forward + its recomputation in backward: N rows each, no padding
    assert max(rows) == 7


def test_sparse_targets_of_different_widths_per_chunk_are_padded():
    """π_old's survivor lists differ in length between chunks (a peaked chunk, a flat one): the per-token values of
    the micro-batch pad them with zeros (index 0, probability 0), which add nothing to the forward KL."""
    from lpreg.core.losses.lpreg import old_targets

    model, (gen, _) = tiny_model(), rollout()
    cfg = replace(REGULARIZERS.get("lpreg").config(), divergence="forward_kl")
    fns = tokens.old_pass_fns(0.02, 0.1, old_targets(cfg))
    with torch.no_grad():
        mb = tokens.plan(gen, slice(0, B), 0)[0]
        whole = tokens.per_token(model, mb, 5.0, 0, fns)  # a high temperature: flat rows, many survivors
        parts = tokens.per_token(model, mb, 5.0, 3, fns)
    assert parts["proxy_idx"].shape == whole["proxy_idx"].shape
    torch.testing.assert_close(parts["proxy_q"].sum(-1), whole["proxy_q"].sum(-1))
