"""Spec §7 test vectors (TV1-TV8) and properties of every policy loss."""

import math
from dataclasses import replace

import pytest
import torch

from lpreg.core.losses import REGULARIZERS, LossInputs, aggregate, fraction_count, k3, masked_mean, select_extreme
from lpreg.core.losses.cov import ClipCovConfig, KLCovConfig
from lpreg.core.losses.lpreg import LpRegConfig
from lpreg.core.losses.ppo import ClipHigherConfig, EntropyConfig, GSPOConfig, HighEntConfig, NoneConfig
from lpreg.core.proxy import FILTERED, proxy_distribution, proxy_log_prob, tail_mass
from lpreg.core.reduce import results

LPREG = LpRegConfig(rho=0.5)  # the spec's toy ρ of TV5; every other value is the regularizer's default


def lpreg(**changes) -> LpRegConfig:
    return replace(LPREG, **changes)


def get_loss(name):
    """Regularizer ``name``'s loss, its metrics as numbers (``lpreg.core.reduce.results``)."""
    fn = REGULARIZERS.get(name).loss

    def call(inp, cfg):
        loss, metrics = fn(inp, cfg)
        return loss, results(metrics)

    return call


def declared_targets(name, cfg, logits, tokens):
    """The old (from detached ``logits``) and new (with gradient) targets regularizer ``name`` declares."""
    reg = REGULARIZERS.get(name)
    old = {k: fn(logits.detach(), tokens, {}) for k, fn in reg.old_targets(cfg).items()}
    new = {k: fn(logits, tokens, old) for k, fn in reg.new_targets(cfg).items()}
    return old, new


def logits_of(probs, width=None):
    """Logits whose softmax is ``probs`` (zero-probability entries get a very negative logit)."""
    p = torch.tensor(probs, dtype=torch.float64)
    if width is not None:
        p = torch.cat([p, torch.zeros(width - len(p), dtype=torch.float64)])
    return torch.where(p > 0, p.clamp_min(1e-300).log(), torch.full_like(p, -1e9))


def inputs(lp, adv, mask=None, old=None, proxy=None, **kw):
    lp = torch.as_tensor(lp, dtype=torch.float64).clone().requires_grad_(True)
    old = lp.detach().clone() if old is None else torch.as_tensor(old, dtype=torch.float64)
    mask = torch.ones_like(old) if mask is None else torch.as_tensor(mask, dtype=torch.float64)
    adv = torch.as_tensor(adv, dtype=torch.float64)
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(old)
    proxy = None if proxy is None else torch.as_tensor(proxy, dtype=torch.float64)
    targets = {"old": {"proxy_log_prob": proxy}} if proxy is not None else {}
    return LossInputs(log_prob=lp, old_log_prob=old, advantages=adv, response_mask=mask, **targets, **kw)


# ---- TV1: proxy construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probs,kappa,mode,expected",
    [
        ([0.60, 0.25, 0.10, 0.04, 0.01], 0.02, "minp", [0.606061, 0.252525, 0.101010, 0.040404, 0]),
        ([0.60, 0.25, 0.10, 0.04, 0.01], 0.10, "minp", [0.631579, 0.263158, 0.105263, 0, 0]),
        ([0.60, 0.25, 0.10, 0.04, 0.01], 0.02, "fixed", [0.606061, 0.252525, 0.101010, 0.040404, 0]),
        ([0.5, 0.3, 0.19, 0.01], 0.02, "minp", [0.5, 0.3, 0.19, 0.01]),  # tie kept: p >= tau (code, not paper)
    ],
)
def test_tv1_proxy_distribution(probs, kappa, mode, expected):
    dist = proxy_distribution(logits_of(probs)[None], kappa, mode)[0]
    assert torch.allclose(dist, torch.tensor(expected, dtype=dist.dtype), atol=1e-6)


def test_tv1_fixed_mode_is_absolute():
    # with tau = 0.05 absolute, 0.04 and 0.01 are filtered; min-p with kappa 0.05 (tau = 0.03) would keep 0.04
    dist = proxy_distribution(logits_of([0.60, 0.25, 0.10, 0.04, 0.01])[None], 0.05, "fixed")[0]
    assert dist[3] == 0 and dist[4] == 0 and math.isclose(dist[:3].sum().item(), 1.0, rel_tol=1e-6)


def test_tv1_proxy_log_prob_at_sampled_tokens_and_tail_mass():
    logits = logits_of([0.60, 0.25, 0.10, 0.04, 0.01])[None, None].expand(1, 2, 5)  # [B=1, T=2, V]
    tokens = torch.tensor([[3, 4]])
    lp = proxy_log_prob(logits, tokens, 0.02)
    assert math.isclose(lp[0, 0].exp().item(), 0.040404, abs_tol=1e-6)
    assert lp[0, 1].item() < FILTERED / 2  # filtered token: about -1e4 in log space
    assert torch.allclose(tail_mass(logits, 0.02), torch.full((1, 2), 0.01, dtype=torch.float64))


def test_proxy_is_fp32_and_detached_even_for_bf16_logits():
    logits = logits_of([0.60, 0.25, 0.10, 0.04, 0.01]).to(torch.bfloat16)[None, None].requires_grad_(True)
    out = proxy_log_prob(logits, torch.tensor([[0]]), 0.02)
    assert out.dtype == torch.float32 and not out.requires_grad


# ---- TV2: the per-token code regularizer ------------------------------------------------------------------

PROXY_Y = 0.040404


@pytest.mark.parametrize(
    "p_theta,value,grad",
    [
        (0.04, 5.067e-5, -0.010101),  # on-policy: gradient = beta * (1 - 1/Z)
        (0.01, 1.644059, -3.040404),  # off-policy drift
        (0.003, 9.867696, -12.468013),  # near saturation
        (0.002, 10.0, 0.0),  # saturated: clamped at 10, zero gradient
    ],
)
def test_tv2_k3_value_and_gradient(p_theta, value, grad):
    lp = torch.tensor(math.log(p_theta), dtype=torch.float64, requires_grad=True)
    out = k3(torch.tensor(math.log(PROXY_Y), dtype=torch.float64) - lp)
    out.backward()
    assert math.isclose(out.item(), value, rel_tol=1e-3, abs_tol=1e-8)
    assert math.isclose(lp.grad.item(), grad, rel_tol=1e-4, abs_tol=1e-12)


def test_tv2_noise_token_gets_only_the_pg_term():
    # both negative tokens selected (k = 2); token 1 is filtered noise (proxy ~ -1e4): no regularizer
    inp = inputs([[math.log(0.04), math.log(0.01)]], [-0.5], proxy=[[math.log(PROXY_Y), FILTERED]])
    loss, m = get_loss("lpreg")(inp, lpreg(rho=1.0))
    loss.backward()
    assert m["lpreg/candidates"] == 2 and m["lpreg/regularized"] == 1
    assert math.isclose(inp.log_prob.grad[0, 1].item(), 0.5 / 2, rel_tol=1e-6)  # plain PG: |A| r / N
    assert math.isclose(inp.log_prob.grad[0, 0].item(), (0.5 - 0.010101) / 2, rel_tol=1e-4)


# ---- TV3: the paper's full-vocabulary forward KL -----------------------------------------------------------


def test_tv3_forward_kl():
    from lpreg.core.losses.lpreg import forward_kl

    old = logits_of([0.60, 0.25, 0.10, 0.04, 0.01])[None]
    assert math.isclose(forward_kl(old, old, 0.02, "minp").item(), 0.0100503, rel_tol=1e-5)
    assert math.isclose(forward_kl(old, old, 0.10, "minp").item(), 0.0512933, rel_tol=1e-5)
    new = logits_of([0.62, 0.25, 0.10, 0.02, 0.01])[None]
    assert math.isclose(forward_kl(new, old, 0.02, "minp").item(), 0.0181837, rel_tol=1e-5)


def test_forward_kl_divergence_switch_uses_full_distributions():
    dist = [0.60, 0.25, 0.10, 0.04, 0.01]
    logits = logits_of(dist)[None, None].expand(1, 2, 5).clone().requires_grad_(True)
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor([[3, 3]])[..., None])[..., 0]
    old = lp.detach()
    cfg = lpreg(rho=1.0, divergence="forward_kl")
    old_t, new_t = declared_targets("lpreg", cfg, logits, torch.tensor([[3, 3]]))
    inp = LossInputs(lp, old, torch.full((1, 2), -0.5, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64),
                     old=old_t, new=new_t)
    loss, m = get_loss("lpreg")(inp, cfg)
    assert m["lpreg/regularized"] == 2
    # on-policy: each kept token adds -ln Z = 0.0100503; pg part is |A| = 0.5 per token
    assert math.isclose(loss.item(), 0.5 + 0.0100503, rel_tol=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# ---- TV4 lives in test_advantages.py -------------------------------------------------------------------------

# ---- TV5: a micro-batch with selection and aggregation ------------------------------------------------------

TV5_DISTS = [  # one full next-token distribution per position of response 2; the sampled token is index 0
    [0.9, 0.09, 0.01],  # t0: Z = 0.99
    [0.05, 0.5, 0.25] + [0.008] * 25,  # t1: p_max 0.5, tau 0.01, Z = 0.80
    [0.3, 0.67, 0.01, 0.01, 0.01],  # t2: Z = 0.97
    [0.008, 0.7, 0.292],  # t3: p_max 0.7, tau 0.014, filtered
]


def tv5_inputs():
    logits = torch.stack([logits_of(d, 28) for d in TV5_DISTS])[None]  # [1, 4, 28]
    proxy2 = proxy_log_prob(logits, torch.zeros(1, 4, dtype=torch.long), 0.02).double()[0]
    assert torch.allclose(proxy2[:3].exp(), torch.tensor([0.909091, 0.0625, 0.309278], dtype=torch.float64),
                          atol=1e-6)
    lp = torch.log(torch.tensor([[0.95, 0.60, 0.03, 0.90], [0.90, 0.05, 0.30, 0.008]], dtype=torch.float64))
    proxy = torch.stack([lp[0], proxy2])  # response 1 is positive and never regularized
    return inputs(lp, [0.8, -0.5], proxy=proxy)


def test_tv5_value_gradient_and_metrics():
    inp = tv5_inputs()
    loss, m = get_loss("lpreg")(inp, LPREG)
    assert math.isclose(loss.item(), -0.1466429, abs_tol=1e-6)
    loss.backward()
    assert math.isclose(inp.log_prob.grad[1, 1].item(), 0.03125, rel_tol=1e-5)  # push-down halved
    assert math.isclose(inp.log_prob.grad[1, 3].item(), 0.0625, rel_tol=1e-6)  # noise: plain PG
    assert m["lpreg/candidates"] == 2 and m["lpreg/regularized"] == 1 and m["lpreg/reg_ratio"] == 0.5
    assert math.isclose(m["lpreg/delta"], 0.05, rel_tol=1e-6)
    assert math.isclose(m["lpreg/div_mean"], 0.0268564, rel_tol=1e-5)
    assert math.isclose(m["lpreg/proxy_ratio_mean"], 1.25, rel_tol=1e-5)


def test_tv5_without_regularizer_is_plain_pg():
    inp = tv5_inputs()
    loss, _ = get_loss("lpreg")(inp, lpreg(beta=0.0, rho=0.0))
    loss.backward()
    assert math.isclose(inp.log_prob.grad[1, 1].item(), 0.0625, rel_tol=1e-6)


def test_strict_mask_drops_a_candidate_equal_to_its_proxy():
    inp = inputs([[math.log(0.04), math.log(0.05)]], [-0.5], proxy=[[math.log(0.04), math.log(0.06)]])
    _, m = get_loss("lpreg")(inp, lpreg(rho=1.0))
    assert m["lpreg/candidates"] == 2 and m["lpreg/regularized"] == 1


def test_regularized_tokens_use_the_unclipped_ratio():
    # ratio 20 > 10 on a negative, regularized token: -A r = 0.5 * 20 = 10, unbounded either way for A < 0;
    # on a positive token the clip at 10 applies
    lp = [[math.log(0.02), math.log(0.02)], [math.log(0.5), math.log(0.5)]]
    old = [[math.log(0.001), math.log(0.001)], [math.log(0.025), math.log(0.025)]]
    inp = inputs(lp, [-0.5, 1.0], old=old, proxy=[[math.log(0.9)] * 2, lp[1]])
    loss, m = get_loss("lpreg")(inp, lpreg(rho=1.0))
    k3v = k3(torch.tensor(math.log(0.9 / 0.02))).item()
    expected = (2 * (0.5 * 20 + k3v) + 2 * (-1.0 * 10)) / 4
    assert m["lpreg/regularized"] == 2 and math.isclose(loss.item(), expected, rel_tol=1e-6)


# ---- TV6: the k > 1 rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_neg,expected", [(150, 0), (199, 0), (250, 2), (20_000, 200)])
def test_tv6_minimum_count(n_neg, expected):
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(1, n_neg, generator=g, dtype=torch.float64) * 5
    inp = inputs(lp, [-1.0], proxy=torch.zeros(1, n_neg))
    _, m = get_loss("lpreg")(inp, lpreg(rho=0.01))
    assert m["lpreg/candidates"] == expected


def test_positive_selection_is_off_by_default_and_switchable():
    lp = torch.log(torch.tensor([[0.01, 0.02, 0.5, 0.6]], dtype=torch.float64))
    proxy = torch.zeros(1, 4, dtype=torch.float64)
    _, m_off = get_loss("lpreg")(inputs(lp, [1.0], proxy=proxy), lpreg(rho=1.0))
    _, m_on = get_loss("lpreg")(inputs(lp, [1.0], proxy=proxy), lpreg(rho=1.0, rho_pos=0.5))
    assert m_off["lpreg/candidates"] == 0 and m_on["lpreg/candidates"] == 2 and m_on["lpreg/regularized"] == 2


def test_batch_scope_uses_the_given_threshold():
    lp = torch.log(torch.tensor([[0.01, 0.02, 0.03, 0.5]], dtype=torch.float64))
    proxy = torch.zeros(1, 4, dtype=torch.float64)
    inp = inputs(lp, [-1.0], proxy=proxy, rollout={"delta_log_prob": math.log(0.025)})
    _, m = get_loss("lpreg")(inp, lpreg(scope="batch"))
    assert m["lpreg/candidates"] == 2 and math.isclose(m["lpreg/delta"], 0.02, rel_tol=1e-6)


def test_nan_free_with_filtered_and_extreme_tokens():
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(4, 50, generator=g, dtype=torch.float64) * 300  # down to p = e^-300
    proxy = torch.where(torch.rand(4, 50, generator=g) < 0.5, torch.full_like(lp, FILTERED), lp + 50)
    inp = inputs(lp, [-1.0, -0.5, 1.0, 0.0], proxy=proxy)
    loss, m = get_loss("lpreg")(inp, lpreg(rho=1.0))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(inp.log_prob.grad).all() and m["lpreg/regularized"] > 0


# ---- randomized: vectorized Lp-Reg == a slow per-token loop written from spec §1.4 -------------------------


def slow_lpreg(lp, old, adv, mask, proxy, rho, beta, clip_low, clip_high):
    """Spec §1.4, one token at a time (float64); ties broken by flat index, lowest first."""
    B, T = lp.shape
    valid = [(i, t) for i in range(B) for t in range(T) if mask[i, t] > 0]
    neg = [(i, t) for (i, t) in valid if adv[i, t] < 0]
    k = max(1, math.floor(rho * len(neg)))
    cand = sorted(neg, key=lambda it: (lp[it].item(), it[0] * T + it[1]))[:k] if k > 1 else []
    reg = {it for it in cand if lp[it].item() < proxy[it].item()}
    total = 0.0
    for it in valid:
        r = torch.exp(lp[it] - old[it])
        a = adv[it]
        if it in reg:
            total = total - a * r + beta * k3(proxy[it] - lp[it])
        else:
            total = total + torch.maximum(-a * r, -a * torch.clamp(r, 1 - clip_low, 1 + clip_high))
    return total / (len(valid) + 1e-8)


@pytest.mark.parametrize("seed", range(12))
def test_vectorized_lpreg_matches_slow_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 8, 12
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 6
    lp[0, :4] = lp[1, 0]  # ties
    old = lp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    rewards = torch.randint(0, 2, (B // 4, 4), generator=g).double()
    rewards[0] = 1.0  # an all-equal group: zero advantage
    from lpreg.core.advantages import grpo_advantages

    adv = grpo_advantages(rewards.flatten(), group_size=4)[:, None].expand(B, T).clone()
    mask = (torch.rand(B, T, generator=g) > 0.2).double()
    proxy = torch.where(torch.rand(B, T, generator=g) < 0.3, torch.full_like(lp, FILTERED),
                        lp + torch.randn(B, T, generator=g, dtype=torch.float64))
    cfg = lpreg(rho=0.3, beta=0.7)

    lp1 = lp.clone().requires_grad_(True)
    fast, _ = get_loss("lpreg")(LossInputs(lp1, old, adv, mask, old={"proxy_log_prob": proxy}), cfg)
    fast.backward()
    lp2 = lp.clone().requires_grad_(True)
    slow = slow_lpreg(lp2, old, adv, mask, proxy, 0.3, 0.7, 1.0, 9.0)
    slow.backward()
    assert abs(fast.item() - slow.item()) < 1e-6
    assert torch.allclose(lp1.grad, lp2.grad, atol=1e-6)


# ---- TV7 / TV8: covariance methods -------------------------------------------------------------------------

COV_A = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
COV_LP = [-0.1, -2.0, -0.5, -0.2, -3.0, -1.0]


def test_tv7_kl_cov_selects_the_top_covariance_token():
    lp = torch.tensor([COV_LP], dtype=torch.float64)
    inp = inputs(lp, torch.tensor([COV_A], dtype=torch.float64), old=lp - 0.1)
    loss, m = get_loss("kl_cov")(inp, KLCovConfig(k_percent=0.2))
    r = math.exp(0.1)
    assert math.isclose(loss.item(), (0.1 + r * 0) / 6, abs_tol=1e-8)  # sum(-A r) = 0, plus |log r| = 0.1
    loss.backward()
    grad = inp.log_prob.grad[0]
    assert math.isclose(grad[4].item(), (r + 1) / 6, rel_tol=1e-6)  # selected: -A r + |log r|
    assert math.isclose(grad[3].item(), r / 6, rel_tol=1e-6)
    assert m["kl_cov/selected"] == 1


def test_tv7_kl_cov_on_policy_adds_nothing():
    inp = inputs([COV_LP], torch.tensor([COV_A], dtype=torch.float64))
    loss, _ = get_loss("kl_cov")(inp, KLCovConfig(k_percent=0.2))
    loss.backward()
    assert abs(loss.item()) < 1e-12 and math.isclose(inp.log_prob.grad[0, 4].item(), 1 / 6, rel_tol=1e-6)


def test_tv8_clip_cov_zeroes_one_token_in_the_covariance_band():
    cfg = ClipCovConfig()
    chosen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        inp = inputs([COV_LP], torch.tensor([COV_A], dtype=torch.float64))
        loss, m = get_loss("clip_cov")(inp, cfg)
        loss.backward()
        zero = [i for i in range(6) if inp.log_prob.grad[0, i] == 0]
        assert len(zero) == 1 and zero[0] in (0, 4) and m["policy/clipfrac"] == pytest.approx(1 / 6)
        chosen.add(zero[0])
    assert chosen == {0, 4}  # uniformly random among the band


# ---- the other baselines -----------------------------------------------------------------------------------


def test_ppo_clip_none_and_clip_higher():
    lp = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    old = torch.log(torch.tensor([[0.25, 0.25]], dtype=torch.float64))  # r = 2
    for name, cfg in [("none", NoneConfig()), ("clip_higher", ClipHigherConfig())]:
        hi = cfg.clip_high
        inp = inputs(lp, [1.0], old=old)
        loss, m = get_loss(name)(inp, cfg)
        assert math.isclose(loss.item(), -(1 + hi), rel_tol=1e-6) and m["policy/clipfrac"] == pytest.approx(1.0)
        loss.backward()
        assert (inp.log_prob.grad == 0).all()  # clipped: no gradient
    inp = inputs(lp, [-1.0], old=old)  # A < 0: max(-A r, -A clip(r)) = r = 2, unclipped
    loss, m = get_loss("none")(inp, NoneConfig())
    assert math.isclose(loss.item(), 2.0, rel_tol=1e-6) and m["policy/clipfrac"] == 0.0


def test_entropy_bonus_subtracts_coef_times_token_mean_entropy():
    ent = torch.tensor([[1.0, 3.0, 100.0]], dtype=torch.float64, requires_grad=True)
    inp = inputs([[-1.0, -1.0, -1.0]], [0.0], mask=[[1, 1, 0]], new={"entropy": ent})
    loss, m = get_loss("entropy")(inp, EntropyConfig())
    assert math.isclose(loss.item(), -0.002 * 2.0, rel_tol=1e-6) and math.isclose(m["loss/reg"], -0.004, rel_tol=1e-6)
    loss.backward()
    assert ent.grad[0, 2] == 0 and math.isclose(ent.grad[0, 0].item(), -0.001, rel_tol=1e-6)


def test_highent_8020_keeps_only_the_top_entropy_tokens():
    ent = torch.tensor([[0.1, 0.9, 0.5, 0.2, 0.3, 0.8, 0.4, 0.05, 0.6, 0.7]], dtype=torch.float64)
    inp = inputs(torch.full((1, 10), -1.0), [-1.0], new={"entropy": ent})
    loss, m = get_loss("highent_8020")(inp, HighEntConfig())
    loss.backward()
    assert torch.nonzero(inp.log_prob.grad[0]).flatten().tolist() == [1, 5]  # entropies 0.9 and 0.8
    assert math.isclose(inp.log_prob.grad[0, 1].item(), 0.5, rel_tol=1e-6) and math.isclose(loss.item(), 1.0, rel_tol=1e-6)
    assert m["highent/kept"] == 2


def test_gspo_uses_the_sequence_ratio_and_seq_mean_token_mean():
    lp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]], dtype=torch.float64)
    old = lp - torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.4, 0.0]], dtype=torch.float64)
    mask = [[1, 1, 1], [1, 1, 0]]
    inp = inputs(lp, [1.0, 1.0], old=old, mask=mask)
    loss, m = get_loss("gspo")(inp, GSPOConfig())
    # seq 0: s = 1 -> loss -1 per token; seq 1: s = e^0.3, clipped at 1 + 4e-4
    assert math.isclose(loss.item(), (-1.0 + -(1 + 4e-4)) / 2, rel_tol=1e-6)
    assert m["policy/clipfrac"] == pytest.approx(2 / 5)


def test_aggregation_modes_respect_the_mask():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert math.isclose(aggregate(x, mask, "token-mean").item(), 7 / 3, rel_tol=1e-6)
    assert math.isclose(masked_mean(x, mask).item(), 7 / 3, rel_tol=1e-6)
    assert math.isclose(aggregate(x, mask, "seq-mean-token-mean").item(), (1.5 + 4) / 2, rel_tol=1e-6)
    assert math.isclose(aggregate(x, mask, "seq-mean-token-sum").item(), (3 + 4) / 2, rel_tol=1e-6)
    with pytest.raises(KeyError, match="token-mean"):
        aggregate(x, mask, "nope")


def test_every_loss_returns_pg_and_reg_parts_and_a_finite_scalar():
    g = torch.Generator().manual_seed(0)
    B, T, V = 8, 6, 11
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    lp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    adv = torch.randn(B, generator=g, dtype=torch.float64)[:, None].expand(B, T)
    for reg in REGULARIZERS.entries():
        name, cfg = reg.name, reg.config()
        old_t, new_t = declared_targets(name, cfg, logits, tokens)
        new_t["spark_log_prob"] = torch.log_softmax(logits, -1)[..., 3]  # a task's decision point (the control's)
        inp = LossInputs(lp, lp.detach() - 0.05, adv, torch.ones(B, T, dtype=torch.float64), old=old_t, new=new_t,
                         rollout=reg.rollout_targets(cfg, lp.detach().flatten(), adv.flatten()))
        loss, m = get_loss(reg.name)(inp, cfg)
        assert loss.dim() == 0 and torch.isfinite(loss), name
        assert {"loss/pg", "loss/reg", "policy/clipfrac"} <= set(m), name
        assert math.isclose(m["loss/pg"] + m["loss/reg"], loss.item(), rel_tol=1e-6, abs_tol=1e-9), name


def test_selection_helper_tie_rule_and_count_rule():
    """The one selection helper (Lp-Reg, 80/20, KL-Cov, Clip-Cov): ties go to the lower flat index; never
    outside the pool; k = max(1, floor(x·n))."""
    v = torch.tensor([[0.3, 0.1, 0.1, 0.5], [0.1, 0.9, 0.9, 0.2]])
    pool = torch.tensor([[True, True, True, True], [True, True, True, False]])
    assert select_extreme(v, pool, 2).tolist() == [[False, True, True, False], [False] * 4]
    assert select_extreme(v, pool, 3).tolist() == [[False, True, True, False], [True, False, False, False]]
    assert select_extreme(v, pool, 1, largest=True).tolist() == [[False] * 4, [False, True, False, False]]
    assert select_extreme(v, pool, 10).sum() == 7  # at most the pool
    assert [fraction_count(x, n) for x, n in [(0.01, 150), (0.01, 250), (0.2, 4), (0.5, 4), (0.0, 9)]] == [1, 2, 1, 2, 1]
