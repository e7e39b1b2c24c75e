"""The proxy filters of lpreg/core/proxy.py (regularizer.proxy) against hand-computed vectors, on [n, V] chunks."""

import math

import pytest
import torch

from lpreg.core.losses.lpreg import LpRegConfig, old_targets, proxy_param
from lpreg.core.proxy import FILTERED, proxy_distribution, proxy_log_prob, proxy_support, survivors

P = [0.60, 0.25, 0.10, 0.04, 0.01]  # H = 1.058134 nats, exp(-H) = 0.347103


def logits_of(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64))


@pytest.mark.parametrize("kind,param,expected", [
    # min-p κ = 0.1: τ = 0.06 keeps 0.60, 0.25, 0.10; Z = 0.95
    ("minp", 0.10, [0.631579, 0.263158, 0.105263, 0, 0]),
    # fixed τ = 0.05 (absolute): the same three survive; min-p with κ = 0.05 (τ = 0.03) would keep 0.04 too
    ("fixed", 0.05, [0.631579, 0.263158, 0.105263, 0, 0]),
    # top-p 0.8: mass ahead of each token in order 0, 0.60, 0.85, ...: keeps 0.60, 0.25; Z = 0.85
    ("topp", 0.80, [0.705882, 0.294118, 0, 0, 0]),
    # top-p 0.9: mass ahead 0.85 < 0.9 keeps 0.10 as well
    ("topp", 0.90, [0.631579, 0.263158, 0.105263, 0, 0]),
    # top-k 4: everything but 0.01; Z = 0.99
    ("topk", 4, [0.606061, 0.252525, 0.101010, 0.040404, 0]),
    # η-sampling ε = 0.05: η = min(0.05, √0.05 · 0.347103 = 0.077614) = 0.05 (ε binds)
    ("eta", 0.05, [0.631579, 0.263158, 0.105263, 0, 0]),
    # ε = 0.2: η = min(0.2, √0.2 · 0.347103 = 0.155229) = 0.155229 (the entropy term binds)
    ("eta", 0.20, [0.705882, 0.294118, 0, 0, 0]),
])
def test_proxy_vectors(kind, param, expected):
    dist = proxy_distribution(logits_of(P)[None], param, kind)[0]
    assert torch.allclose(dist, torch.tensor(expected, dtype=dist.dtype), atol=1e-6)


def test_topk_keeps_ties_and_caps_at_the_vocabulary():
    z = logits_of([0.4, 0.2, 0.2, 0.2])[None]
    assert survivors(z, 2, "topk").tolist() == [[True, True, True, True]]
    assert survivors(z, 10, "topk").all()


def test_eta_threshold_adapts_to_entropy():
    # a flat row (H = log 4, η = min(0.2, √0.2/4 = 0.1118)) keeps all four; the peaked row P drops two at ε = 0.2
    flat = survivors(logits_of([0.25] * 4)[None], 0.2, "eta")
    assert flat.all()
    assert survivors(logits_of(P)[None], 0.2, "eta").tolist() == [[True, True, False, False, False]]


@pytest.mark.parametrize("kind", ["minp", "fixed", "topp", "topk", "eta"])
def test_every_kind_works_on_a_chunk_as_the_token_pass_calls_it(kind):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 64, generator=g) * 3  # [n, V]: one chunk of fp32 logits
    y = torch.randint(0, 64, (7,), generator=g)  # [n]
    cfg = LpRegConfig(proxy=kind, divergence="forward_kl")
    fns = old_targets(cfg)
    lp = fns["proxy_log_prob"](z, y, {})  # [n]
    assert lp.shape == (7,)
    keep = survivors(z, proxy_param(cfg), kind)  # [n, V]
    picked = keep.gather(-1, y[:, None])[:, 0]
    assert (lp[picked] > -30).all() and (lp[~picked] < FILTERED / 2).all()
    assert torch.equal(lp, torch.cat([proxy_log_prob(z[i:i + 3], y[i:i + 3], proxy_param(cfg), kind)
                                      for i in range(0, 7, 3)]))  # chunking changes nothing
    idx, q = proxy_support(z, proxy_param(cfg), kind)
    assert torch.allclose(q.sum(-1), torch.ones(7)) and torch.equal(fns["proxy_idx"](z, y, {}), idx)


def test_an_unknown_proxy_is_refused_when_the_config_is_composed():
    from conftest import compose_cfg

    from lpreg.checks import ConfigValueError

    with pytest.raises(ConfigValueError, match="regularizer.proxy='top_p' is not a valid choice; valid choices: minp"):
        compose_cfg(["regularizer=lpreg", "regularizer.proxy=top_p"])
    with pytest.raises(ValueError, match="regularizer.proxy"):
        survivors(torch.zeros(1, 3), 0.1, "nucleus")
    assert math.isclose(proxy_param(LpRegConfig()), 0.02)
