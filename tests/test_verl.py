"""The verl backend against verl's own code, on CPU (``pip install -e '.[verl]'``; skipped without verl).

- losses: every arm registered in verl's registry equals the native loss (value and gradient); verl's own losses
  that the backend uses for an arm equal ours under the translated config;
- metrics: our values through verl's ``Metric`` aggregation and the read-back equal the native merge;
- verl's FSDP engine (one process, gloo, lpreg's CPU platform) runs π_old's log-prob pass and an update with our
  loss: the targets equal our token pass, the update's metrics and gradient norm equal the native update's, and
  two micro-batches equal one where the semantics say so;
- config: the four paper experiments compose into verl configs that pass verl's validation, value by value; bad
  configs are refused with the key; the memory check refuses what cannot fit;
- read-back: a log written by verl's own file logger comes back under our names.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl", reason="verl is not installed: pip install -e '.[verl]' (the verl backend's tests)")

from lpreg.verl import platform  # noqa: E402

platform.register()  # before verl first asks for its device

from lpreg.core.advantages import grpo_advantages  # noqa: E402
from lpreg.core.losses import REGULARIZERS, LossInputs, Norm, approx_kl  # noqa: E402
from lpreg.core.reduce import Sum, merge, results  # noqa: E402
from lpreg.verl import extension  # noqa: E402  (verl imports it as external_lib: it registers our losses)
from lpreg.verl import losses as vlosses  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = next((ROOT / "lpreg" / "assets").glob("tiny-arithmetic-seeded-*"))  # the shipped embedded warm-up (seed 0)
ARMS = [r.name for r in REGULARIZERS.entries() if not r.control]  # controls run natively only


def reg_config(name: str, **kw):
    return REGULARIZERS.get(name).config(**kw)


# ---- verl's actor config for an arm (composed once) --------------------------------------------------------


@pytest.fixture(scope="module")
def verl_base():
    """verl's trainer config of a small backend=verl run of the tiny model (composed once for the module)."""
    from conftest import compose_cfg

    from lpreg.verl import config as vconf

    cfg = compose_cfg(["backend=verl", "model=hf", f"model.path={TINY}", "rollout=vllm", "task=math",
                       "trainer.prompts_per_step=4", "trainer.mini_batches=1", "trainer.max_tokens_per_micro_batch=16384",
                       "backend.nnodes=1", "backend.gpus_per_node=1"])
    return vconf.compose_verl(vconf.values(cfg, Path("/tmp/lpreg-test-job")))


def actor_config(vc, reg_cfg):
    """The typed actor config verl's worker builds, for the arm ``reg_cfg`` (the backend's translation)."""
    from omegaconf import OmegaConf, open_dict
    from verl.utils.config import omega_conf_to_dataclass

    actor = OmegaConf.create(OmegaConf.to_container(vc.actor_rollout_ref.actor, resolve=False))
    root = OmegaConf.create({"actor_rollout_ref": {"actor": actor}})
    with open_dict(root):
        for key, value in vlosses.actor_fields(reg_cfg).items():
            OmegaConf.update(root, f"actor_rollout_ref.actor.{key}", value, merge=False, force_add=True)
    return omega_conf_to_dataclass(root.actor_rollout_ref.actor)


# ---- random batches ------------------------------------------------------------------------------------------


def random_batch(seed: int, B: int = 16, R: int = 40, V: int = 48, spread: float = 1.5):
    """Per-token inputs of one mini-batch with π_old's and the current logits (so every target can be computed)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, R + 1, (B,), generator=g)
    mask = (torch.arange(R)[None] < lengths[:, None]).double()  # [B, R]
    tokens = torch.randint(0, V, (B, R), generator=g)
    old_logits = torch.randn(B, R, V, generator=g, dtype=torch.float64) * 3
    new_logits = (old_logits + spread * torch.randn(B, R, V, generator=g, dtype=torch.float64)).requires_grad_()
    rewards = (torch.rand(B, generator=g) < 0.4).double()
    adv = grpo_advantages(rewards, 4)[:, None] * mask  # [B, R]
    return SimpleNamespace(mask=mask, tokens=tokens, old_logits=old_logits, new_logits=new_logits, adv=adv)


def targets(reg_cfg, b):
    """The arm's declared targets for batch ``b``, as the native token pass computes them (``[B, R, ...]``)."""
    from lpreg.core.metrics import token_entropy

    reg = REGULARIZERS.get(reg_cfg.name)
    flat = b.mask > 0
    z_old, y = b.old_logits[flat], b.tokens[flat]  # [N, V], [N]
    old = {k: fn(z_old, y, {}) for k, fn in reg.old_targets(reg_cfg).items()}
    z_new = b.new_logits[flat]
    new = {k: fn(z_new, y, old) for k, fn in reg.new_targets(reg_cfg).items()}
    if "entropy" in new:
        new["entropy"] = token_entropy(z_new)

    def grid(v):
        out = v.new_zeros(*b.mask.shape, *v.shape[1:])
        out[flat] = v
        return out

    old_lp = torch.log_softmax(b.old_logits, -1).gather(-1, b.tokens[..., None])[..., 0]
    rollout = reg.rollout_targets(reg_cfg, old_lp[flat], b.adv[flat])
    return {k: grid(v) for k, v in old.items()}, {k: grid(v) for k, v in new.items()}, rollout


def log_probs(b):
    lp = torch.log_softmax(b.new_logits, -1).gather(-1, b.tokens[..., None])[..., 0]
    old = torch.log_softmax(b.old_logits, -1).gather(-1, b.tokens[..., None])[..., 0]
    return lp, old


ARM_CONFIGS = [
    *[(name, {}) for name in ARMS],
    ("lpreg", {"rho": 0.05}), ("lpreg", {"rho": 0.05, "scope": "batch"}), ("lpreg", {"rho": 0.05, "rho_pos": 0.05}),
    ("lpreg", {"rho": 0.05, "proxy": "topk", "top_k": 5}), ("lpreg", {"rho": 0.05, "divergence": "forward_kl"}),
    ("kl_cov", {"k_percent": 2.0}), ("clip_cov", {"clip_ratio": 0.02}),
]


def _native(reg_cfg, b, torch_seed=0):
    old, new, rollout = targets(reg_cfg, b)
    lp, old_lp = log_probs(b)
    inp = LossInputs(lp, old_lp, b.adv, b.mask, old=old, new=new, rollout=rollout)
    torch.manual_seed(torch_seed)
    loss, metrics = REGULARIZERS.get(reg_cfg.name).loss(inp, reg_cfg)
    (grad,) = torch.autograd.grad(loss, b.new_logits)
    return loss.item(), results(metrics), grad


@pytest.mark.parametrize(("name", "kw"), ARM_CONFIGS, ids=[f"{n}-{'-'.join(map(str, k.values()))}"
                                                          for n, k in ARM_CONFIGS])
def test_registered_loss_equals_native(verl_base, name, kw):
    """``lpreg:<arm>`` from verl's registry (verl's arguments, the actor config verl builds) = our loss."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    reg_cfg = reg_config(name, **kw)
    b = random_batch(1)
    want_loss, want_metrics, want_grad = _native(reg_cfg, b)
    b.new_logits.grad = None
    old, new, rollout = targets(reg_cfg, b)
    lp, old_lp = log_probs(b)
    config = actor_config(verl_base, reg_cfg)
    torch.manual_seed(0)
    loss, metrics = get_policy_loss_fn(vlosses.loss_mode(name))(
        old_lp, lp, b.adv, b.mask.bool(), reg_cfg.loss_agg, config, None,
        lpreg=vlosses.LpregCall(reg_cfg, old, new, rollout))
    (grad,) = torch.autograd.grad(loss, b.new_logits)
    assert loss.item() == pytest.approx(want_loss, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-12)
    got = results(metrics)
    assert got.keys() == want_metrics.keys()
    for key in got:
        assert got[key] == pytest.approx(want_metrics[key], rel=1e-9, abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize("name", sorted(vlosses.VERL_OWN))
@pytest.mark.parametrize("seed", [2, 3])
def test_verl_own_loss_equals_native(verl_base, name, seed):
    """verl's own loss (the one the backend runs for this arm), with the translated config, = ours."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    reg_cfg = reg_config(name, **({"k_percent": 5.0} if name == "kl_cov" else {"clip_ratio": 0.05}
                                  if name == "clip_cov" else {}))
    b = random_batch(seed, spread=0.6 if name == "gspo" else 1.5)
    want_loss, _, want_grad = _native(reg_cfg, b, torch_seed=seed)
    config = actor_config(verl_base, reg_cfg)
    assert config.policy_loss.loss_mode == vlosses.VERL_OWN[name]
    lp, old_lp = log_probs(b)
    torch.manual_seed(seed)
    loss, _ = get_policy_loss_fn(config.policy_loss.loss_mode)(old_lp, lp, b.adv, b.mask.bool(),
                                                                config.loss_agg_mode, config, None)
    (grad,) = torch.autograd.grad(loss, b.new_logits)
    assert loss.item() == pytest.approx(want_loss, rel=1e-7, abs=1e-10)
    torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-10)


def test_dual_clip_would_differ(verl_base):
    """The reason for ``clip_ratio_c``: with verl's default (3) its vanilla loss is not our GRPO (ratios > 3 with
    negative advantages occur in this batch)."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    reg_cfg = reg_config("none")
    b = random_batch(4, spread=3.0)
    want_loss, _, _ = _native(reg_cfg, b)
    config = actor_config(verl_base, reg_cfg)
    object.__setattr__(config, "clip_ratio_c", 3.0)
    lp, old_lp = log_probs(b)
    loss, _ = get_policy_loss_fn("vanilla")(old_lp, lp, b.adv, b.mask.bool(), "token-mean", config, None)
    assert abs(loss.item() - want_loss) > 1e-3


def test_arms_with_targets_refuse_verl_ppo_loss(verl_base):
    """Called by verl's own ``ppo_loss`` (no targets), Lp-Reg stops with a message naming lpreg's extension."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    b = random_batch(5)
    lp, old_lp = log_probs(b)
    config = actor_config(verl_base, reg_config("lpreg"))
    with pytest.raises(RuntimeError, match="backend=verl"):
        get_policy_loss_fn("lpreg:lpreg")(old_lp, lp, b.adv, b.mask.bool(), "token-mean", config, None)


LPREG_WIDE = {"rho": 0.3, "kappa": 1e-3}  # selects and keeps tokens in these small random batches


@pytest.mark.parametrize(("name", "kw"), [("none", {}), ("entropy", {}), ("gspo", {}),
                                          ("lpreg", {**LPREG_WIDE, "scope": "batch"}), ("lpreg", {"rho": 0.006})])
def test_two_micro_batches_equal_one(verl_base, name, kw):
    """With verl's mini-batch counts (``global_batch_info``), two micro-batches add up to the whole mini-batch
    (loss, gradient, metrics) where the arm does not select per micro-batch; Lp-Reg ``scope: micro_batch`` does
    select per micro-batch, and it differs."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    reg_cfg = reg_config(name, **kw)
    b = random_batch(6, B=24, R=60)
    config = actor_config(verl_base, reg_cfg)
    fn = get_policy_loss_fn(vlosses.loss_mode(name))

    def run(parts):
        old, new, rollout = targets(reg_cfg, b)
        lp, old_lp = log_probs(b)
        config.global_batch_info.update(dp_size=1, batch_num_tokens=float(b.mask.sum()), global_batch_size=24)
        total, metrics = 0.0, []
        for rows in parts:
            cut = lambda d, rows=rows: {k: v[rows] for k, v in d.items()}
            loss, m = fn(old_lp[rows], lp[rows], b.adv[rows], b.mask[rows].bool(), reg_cfg.loss_agg, config, None,
                         lpreg=vlosses.LpregCall(reg_cfg, cut(old), cut(new), rollout))
            total = total + loss
            metrics.append(m)
        (grad,) = torch.autograd.grad(total, b.new_logits)
        return total.item(), results(merge(metrics)), grad

    one, two = run([slice(0, 24)]), run([slice(0, 12), slice(12, 24)])
    if name == "lpreg" and reg_cfg.scope == "micro_batch":  # k = floor(ρ|N|) is 2 over the whole mini-batch and
        assert one[1]["lpreg/candidates"] == 2 and two[1]["lpreg/candidates"] == 0  # 1 (nothing) in each half
    else:
        assert name != "lpreg" or one[1]["lpreg/regularized"] > 0
        torch.testing.assert_close(one[2], two[2], rtol=1e-9, atol=1e-12)
        for key in one[1]:
            assert one[1][key] == pytest.approx(two[1][key], rel=1e-9, abs=1e-12, nan_ok=True), key


# ---- verl's FSDP engine, one CPU process ----------------------------------------------------------------------


LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def process_group():
    """One gloo process (verl's workers need torch.distributed and the launcher's environment)."""
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    saved = {k: os.environ.get(k) for k in LAUNCHER_ENV}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


FP32 = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}


def make_worker(actor_cfg, max_tokens: int, remove_padding: bool = True):
    """verl's ``TrainingWorker`` (what ``ActorRolloutRefWorker.actor`` is) for the tiny model, built from the actor
    config the backend composes, with CPU settings: FSDP2 in fp32, sdpa attention, no torch.compile."""
    from verl.workers.config import HFModelConfig, TrainingWorkerConfig
    from verl.workers.engine_workers import TrainingWorker

    model = HFModelConfig(path=str(TINY), override_config={"attn_implementation": "sdpa"},
                          use_remove_padding=remove_padding, enable_gradient_checkpointing=False,
                          external_lib=extension.__name__)
    engine = dataclasses.replace(actor_cfg.engine, strategy="fsdp2", model_dtype="fp32", mixed_precision=FP32,
                                 use_torch_compile=False, use_dynamic_bsz=True, max_token_len_per_gpu=max_tokens,
                                 infer_max_token_len_per_gpu=max_tokens)
    optim = dataclasses.replace(actor_cfg.optim, total_training_steps=10)
    worker = TrainingWorker(TrainingWorkerConfig(model_type="language_model", model_config=model,
                                                 engine_config=engine, optimizer_config=optim))
    worker.reset()
    return worker


class Engines:
    """verl workers of the tiny model, built once per layout; ``get`` hands one out with its initial weights (so
    each test's update starts from the model the native reference loads)."""

    def __init__(self, actor_cfg):
        self.actor_cfg, self.workers, self.initial = actor_cfg, {}, {}

    def get(self, remove_padding: bool = True):
        if remove_padding not in self.workers:
            worker = make_worker(self.actor_cfg, 200, remove_padding)
            self.workers[remove_padding] = worker
            self.initial[remove_padding] = [p.detach().clone() for p in worker.engine.module.parameters()]
        worker = self.workers[remove_padding]
        with torch.no_grad():
            for p, p0 in zip(worker.engine.module.parameters(), self.initial[remove_padding]):
                p.copy_(p0)
        return worker


@pytest.fixture(scope="module")
def engines(verl_base, process_group):
    return Engines(actor_config(verl_base, reg_config("none")))


def rollout(seed: int, B: int = 16, G: int = 4, P: int = 6, R: int = 10):
    """A rollout of the tiny model: random left-padded prompts, responses sampled from the model (at T = 1, up to
    its end token), 0/1 rewards with two mixed groups and two all-equal ones."""
    g = torch.Generator().manual_seed(seed)
    plen = torch.randint(2, P + 1, (B,), generator=g)
    pmask = (torch.arange(P)[None] >= P - plen[:, None]).long()
    prompt_ids = torch.randint(2, 64, (B, P), generator=g) * pmask
    torch.manual_seed(seed)
    with torch.no_grad():
        out = native_model().generate(input_ids=prompt_ids, attention_mask=pmask, do_sample=True, max_new_tokens=R,
                                      min_new_tokens=1, pad_token_id=0, eos_token_id=1, top_k=0, top_p=1.0)
    response_ids = torch.nn.functional.pad(out[:, P:], (0, R - (out.shape[1] - P)))  # [B, R]
    ended = (response_ids == 1).long().cumsum(-1)
    rmask = ((ended == 0) | ((ended == 1) & (response_ids == 1))).long()  # up to and with the end token
    response_ids = response_ids * rmask
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0])[:B]
    return SimpleNamespace(prompt_ids=prompt_ids, prompt_mask=pmask, response_ids=response_ids,
                           response_mask=rmask.double(), rewards=rewards, G=G,
                           adv=grpo_advantages(rewards, G)[:, None] * rmask)


def verl_batch(gen):
    """The rollout as verl's trainer hands it to its workers (no-padding input ids, padded responses)."""
    from tensordict import TensorDict
    from verl.workers.utils.padding import left_right_2_no_padding

    ids = torch.cat([gen.prompt_ids, gen.response_ids], 1)
    attn = torch.cat([gen.prompt_mask, gen.response_mask.long()], 1)
    td = TensorDict({"prompts": gen.prompt_ids, "responses": gen.response_ids, "input_ids": ids,
                     "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp_min(0),
                     "response_mask": gen.response_mask.long()}, batch_size=len(ids))
    return left_right_2_no_padding(td)


def plan_of(reg_cfg):
    return extension.ActorPlan(reg_cfg, tail_kappa=0.02, lowprob_threshold=0.1, token_chunk=7)


def verl_old_pass(worker, actor_cfg, plan, gen):
    """verl's log-prob pass of π_old with lpreg's flags and loss object; its outputs and the batch."""
    from verl.utils import tensordict_utils as tu

    worker.set_loss_fn(partial(extension.actor_loss, config=actor_cfg, plan=plan))
    td = verl_batch(gen)
    tu.assign_non_tensor(td, temperature=1.0, calculate_entropy=True, global_token_num=[1] * len(gen.rewards))
    extension.mark_old_pass(td)
    return worker.infer_batch(td), td


MICRO_BATCHES = [0]  # micro-batches of the last verl_update


def verl_update(worker, actor_cfg, plan, gen, old_out, max_tokens: int = 200):
    """verl's update of one mini-batch with lpreg's loss, fed π_old's outputs as verl's trainer feeds them; the
    step's metrics as verl's trainer logs them (``actor/`` prefix, mean over updates), read back to our names."""
    import numpy as np
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import reduce_metrics
    from verl.utils.py_functional import rename_dict
    from verl.workers.utils.padding import no_padding_2_padding

    from lpreg.verl.readback import translate

    td = verl_batch(gen)
    td["old_log_probs"] = no_padding_2_padding(old_out["log_probs"], td).float()
    td["advantages"] = gen.adv.float()
    for key in old_out.keys():
        if key.startswith(extension.OLD):
            td[key] = old_out[key]  # verl's trainer keeps every field a worker wrote (its TransferQueue)
    B = len(gen.rewards)
    tu.assign_non_tensor(td, temperature=1.0, global_batch_size=B, mini_batch_size=B, epochs=1, seed=0,
                         dataloader_kwargs={"shuffle": False}, max_token_len_per_gpu=max_tokens)
    extension.mark_update(td, plan)
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("student_logits") is None)
        return extension.actor_loss(*args, **kwargs)

    worker.set_loss_fn(partial(counted, config=actor_cfg, plan=plan))
    out = tu.get(worker.train_mini_batch(td), "metrics")
    MICRO_BATCHES[:] = [sum(calls)]
    logged = reduce_metrics(rename_dict(dict(out), "actor/"))
    _, metrics, _ = translate({"step": 1, "data": {k: float(np.asarray(v)) for k, v in logged.items()}}, 1, "greedy")
    return metrics


def native_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)


def native_step(reg_cfg, gen, chunk: int = 7):
    """The native trainer's update of one mini-batch in one micro-batch (its token pass and loss), and its
    per-rollout ``policy/*`` metrics and gradient norm."""
    from lpreg.core.metrics import policy_metrics
    from lpreg.native.tokens import grid, old_pass_fns, per_token, plan

    reg = REGULARIZERS.get(reg_cfg.name)
    model = native_model()
    mb = plan(gen, slice(0, len(gen.rewards)), 0)[0]
    model.eval()
    with torch.no_grad():
        old = per_token(model, mb, 1.0, chunk, old_pass_fns(0.02, 0.1, reg.old_targets(reg_cfg)))
    mask = mb.response_mask > 0
    R = mb.response_mask.shape[1]
    adv = gen.adv[:, :R].double()
    rollout = reg.rollout_targets(reg_cfg, old["log_prob"], adv[mask])
    model.train()
    new_fns = reg.new_targets(reg_cfg)
    new = per_token(model, mb, 1.0, chunk, new_fns, old=old, grad=True)
    inp = LossInputs(grid(new["log_prob"], mb), grid(old["log_prob"], mb), adv.to(new["log_prob"].dtype),
                     mb.response_mask.float(), old={k: grid(old[k], mb) for k in reg.old_targets(reg_cfg)},
                     new={k: grid(new[k], mb) for k in new_fns}, rollout=rollout,
                     norm=Norm(float(mask.sum()), float(len(mask)), float(len(mask))))
    torch.manual_seed(0)
    loss, m = reg.loss(inp, reg_cfg)
    loss.backward()
    m["loss/total"] = Sum(loss.item())
    m["policy/approx_kl"] = approx_kl(inp.log_prob, inp.old_log_prob, inp.response_mask)
    out = results(merge([m]))
    p = torch.zeros_like(mb.response_mask).masked_scatter(mask, old["log_prob"].exp().to(mb.response_mask.dtype))
    out |= policy_metrics({k: old[k] for k in ("entropy", "tail_mass", "lowprob_mass")}, p, mb.response_mask,
                          mb.tokens, 0.1, {})
    groups = gen.rewards.view(-1, gen.G)
    out["train/zero_adv_frac"] = (groups == groups[:, :1]).all(-1).float().mean().item()
    out["optim/grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
    return out, old, mb


def test_old_pass_targets_equal_token_pass(verl_base, engines):
    """π_old's per-token targets from verl's logits hook (both of verl's layouts: packed, and padded) = the native
    token pass's on the same model and sequences; verl's own log-probs and entropy agree too."""
    from verl.workers.utils.padding import no_padding_2_padding

    from lpreg.native.tokens import grid

    reg_cfg = reg_config("lpreg", rho=0.05, divergence="forward_kl", proxy="topk", top_k=5)
    gen = rollout(11)
    _, old, mb = native_step(reg_config("lpreg", proxy="topk", top_k=5), gen)
    plan = plan_of(reg_config("lpreg", proxy="topk", top_k=5))
    R = mb.response_mask.shape[1]
    for remove_padding in (True, False):
        worker = engines.get(remove_padding)
        out, td = verl_old_pass(worker, actor_config(verl_base, reg_cfg), plan, gen)
        for name in ("entropy", "tail_mass", "lowprob_mass", "proxy_log_prob"):
            got = no_padding_2_padding(out[extension.OLD + name], td)[:, :R]
            torch.testing.assert_close(got, grid(old[name], mb).float(), rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(no_padding_2_padding(out["log_probs"], td)[:, :R] * mb.response_mask.float(),
                                   grid(old["log_prob"], mb).float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(no_padding_2_padding(out["entropy"], td)[:, :R] * mb.response_mask.float(),
                                   grid(old["entropy"], mb).float(), rtol=1e-5, atol=1e-5)


UPDATE_ARMS = [("lpreg", {"rho": 0.2}), ("lpreg", {"rho": 0.2, "scope": "batch"}),
               ("lpreg", {"rho": 0.2, "divergence": "forward_kl"}), ("entropy", {}),
               ("highent_8020", {}), ("none", {}), ("kl_cov", {"k_percent": 10.0})]


@pytest.mark.parametrize(("name", "kw"), UPDATE_ARMS, ids=[f"{n}-{'-'.join(map(str, k.values()))}"
                                                           for n, k in UPDATE_ARMS])
def test_update_equals_native(verl_base, engines, name, kw):
    """One update on verl's engine with lpreg's loss and targets, read back as verl's trainer logs it, = the native
    update of the same mini-batch: every loss, Lp-Reg and policy metric, and the gradient norm."""
    reg_cfg = reg_config(name, **kw)
    gen = rollout(12)
    want, _, _ = native_step(reg_cfg, gen)
    actor_cfg = actor_config(verl_base, reg_cfg)
    plan = plan_of(reg_cfg)
    worker = engines.get()
    old_out, _ = verl_old_pass(worker, actor_cfg, plan, gen)
    got = verl_update(worker, actor_cfg, plan, gen, old_out)
    if name == "lpreg":
        assert want["lpreg/regularized"] > 0
    missing = sorted(set(want) - set(got))
    assert not missing, f"not read back from verl: {missing}"
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=2e-4, abs=2e-6, nan_ok=True), key


ENGINE_SAME = [("none", {}), ("entropy", {}), ("lpreg", {"rho": 0.2, "scope": "batch"})]


@pytest.mark.parametrize(("name", "kw"), ENGINE_SAME, ids=[n + ("-batch" if k else "") for n, k in ENGINE_SAME])
def test_engine_micro_batches_equal_one(verl_base, engines, name, kw):
    """verl's dynamic batch size cutting the update into several micro-batches gives the update of one
    micro-batch (metrics and gradient norm) for the arms that do not select per micro-batch."""
    reg_cfg = reg_config(name, **kw)
    gen = rollout(13)
    actor_cfg, plan = actor_config(verl_base, reg_cfg), plan_of(reg_cfg)
    runs = []
    for budget in (200, 20):  # one micro-batch; at most 20 tokens each (a sequence here has up to 16)
        worker = engines.get()
        old_out, _ = verl_old_pass(worker, actor_cfg, plan, gen)
        runs.append(verl_update(worker, actor_cfg, plan, gen, old_out, budget))
        runs.append(MICRO_BATCHES[0])
    one, n_one, many, n_many = runs
    assert n_one == 1 and n_many > 2
    if name == "lpreg":
        assert one["lpreg/regularized"] > 0
    assert one.keys() == many.keys()
    for key in one:
        assert many[key] == pytest.approx(one[key], rel=2e-5, abs=1e-7, nan_ok=True), key


# ---- metrics through verl's aggregation -----------------------------------------------------------------------


def test_metrics_through_verl_aggregation():
    """Our values -> verl ``Metric`` per micro-batch -> verl's merge over ranks and micro-batches
    (``Metric.aggregate_dp``) and its trainer's mean over updates -> read-back: one update gives the native merge
    of all its micro-batches on all ranks; ``Sum`` over two updates gives their mean, as the native trainer logs a
    step; ``Mean`` over two updates gives the pooled mean; ``Max`` with no value reads NaN."""
    import numpy as np
    from verl.utils.metric import Metric

    from lpreg.core.reduce import Max, Mean, step_values
    from lpreg.verl.readback import translate

    def update(parts_per_rank):  # [rank][micro-batch] -> {name: value}, as verl's worker returns one update
        per_rank = [{} for _ in parts_per_rank]
        for r, parts in enumerate(parts_per_rank):
            for part in parts:
                for k, v in extension.to_verl(vlosses.scaled(part, len(parts_per_rank)), extension.UPDATE_NS).items():
                    per_rank[r].setdefault(k, Metric(v.aggregation)).append(v)
        return {k: Metric.aggregate_dp([rank[k] for rank in per_rank]) for k in per_rank[0]}

    def part(i):
        return {"loss/pg": Sum(0.1 * i), "lpreg/reg_ratio": Mean(float(i), float(2 * i + 1)),
                "lpreg/delta": Max(0.01 * i if i % 2 else math.nan)}

    ranks = [[part(1), part(2), part(3)], [part(4), part(5), part(6)]]
    first = update(ranks)
    _, got, _ = translate({"step": 1, "data": {"actor/" + k: v for k, v in first.items()}}, 1, "greedy")
    want = results(merge([p for rank in ranks for p in rank]))
    for key in want:
        assert got[key] == pytest.approx(want[key]), key
    second_ranks = [[part(7)], [{"loss/pg": Sum(0.2), "lpreg/reg_ratio": Mean(0.0, 0.0), "lpreg/delta": Max(math.nan)}]]
    second = update([r * 3 for r in second_ranks])  # same number of micro-batches on every rank, as verl requires
    logged = {"actor/" + k: float(np.mean([first[k], second[k]])) for k in first}
    _, got2, _ = translate({"step": 1, "data": logged}, 2, "greedy")
    native_updates = [want, results(merge([p for rank in second_ranks for p in rank * 3]))]
    assert got2["loss/pg"] == pytest.approx(step_values(native_updates)["loss/pg"])
    pooled = merge([p for rank in ranks for p in rank] + [p for rank in second_ranks for p in rank * 3])
    assert got2["lpreg/reg_ratio"] == pytest.approx(pooled["lpreg/reg_ratio"].result)
    assert math.isnan(translate({"step": 1, "data": {"actor/_lpreg/lpreg/delta/peak": None}}, 1, "greedy")[1][
        "lpreg/delta"])


def test_metric_names_avoid_verls_name_rules():
    """verl's trainer reduces keys holding 'max' or 'min' with max / min: every name we emit avoids both."""
    from lpreg.core.metrics import METRICS
    from lpreg.core.reduce import Max, Mean

    for name in METRICS:
        for kind in (Sum(1.0), Mean(1.0, 1.0), Max(1.0)):
            for key in extension.emitted_names(name, kind, extension.UPDATE_NS):
                assert "max" not in key and "min" not in key or "max" in name or "min" in name
    with pytest.raises(ValueError, match="max"):
        extension.to_verl({"rollout/logprob_diff_max": Sum(1.0)}, extension.UPDATE_NS)


# ---- read-back of verl's own file logger ----------------------------------------------------------------------


def test_readback_of_verls_file_logger(tmp_path, monkeypatch):
    """A log written by verl's own tracking (file backend, as its trainer logs) reads back under our names."""
    from verl.utils.tracking import Tracking

    from lpreg.verl.readback import Follower, translate

    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    tracking = Tracking(project_name="p", experiment_name="e", default_backend=["file"])
    tracking.log(data={"val-core/aime24/acc/mean@1": 0.25, "val-core/math500/acc/mean@1": 0.75}, step=0)
    tracking.log(data={"actor/grad_norm": 0.5, "actor/lr": 1e-6, "critic/score/mean": 0.375,
                       "response_length/mean": 812.0, "response_length/clip_ratio": 0.125, "timing_s/step": 12.0,
                       "actor/_lpreg/lpreg/candidates/sum": 7.0, "actor/_lpreg/lpreg/reg_ratio/total": 3.0,
                       "actor/_lpreg/lpreg/reg_ratio/weight": 4.0, "actor/_lpreg/lpreg/delta/peak": float("-inf"),
                       "actor/_lpreg_rollout/policy/entropy/total": 10.0,
                       "actor/_lpreg_rollout/policy/entropy/weight": 40.0,
                       "actor/_lpreg_rollout/policy/lowprob_count/sum": 12.5, "val-core/aime24/acc/mean@1": 0.5},
                 step=1)
    tracking.logger["file"].finish()
    records = Follower(path).new_records()
    assert [r["step"] for r in records] == [0, 1]
    step0, train0, eval0 = translate(records[0], 8, "greedy")
    assert (step0, train0) == (0, {})
    assert eval0 == {"eval/aime24/acc": 0.25, "eval/aime24/greedy": 0.25, "eval/math500/acc": 0.75,
                     "eval/math500/greedy": 0.75, "eval/mean": 0.5}
    _, train, ev = translate(records[1], 8, "greedy")
    assert train["optim/grad_norm"] == 0.5 and train["optim/lr"] == 1e-6
    assert train["train/reward_mean"] == train["train/accuracy"] == 0.375
    assert train["train/response_len_mean"] == 812.0 and train["train/response_clip_frac"] == 0.125
    assert train["timing/step"] == 12.0
    assert train["lpreg/candidates"] == 7.0 and train["lpreg/reg_ratio"] == 0.75 and math.isnan(train["lpreg/delta"])
    assert train["policy/entropy"] == 0.25 and train["policy/lowprob_count"] == 100.0  # 12.5 per update × 8
    assert ev["eval/aime24/acc"] == 0.5


def test_follower_waits_for_a_torn_line(tmp_path):
    from lpreg.verl.readback import Follower

    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "data": {}}\n{"step": 2, "da')
    f = Follower(path)
    assert [r["step"] for r in f.new_records()] == [1]
    with path.open("a") as fh:
        fh.write('ta": {}}\n')
    assert [r["step"] for r in f.new_records()] == [2]


# ---- config: the paper experiments, refusals, memory -------------------------------------------------------------

# Shapes of the paper's models as their config.json on the Hugging Face Hub gives them (hidden, intermediate,
# layers, heads, KV heads, head dim, vocabulary, tied embeddings): the memory check needs them and the tests run
# offline, so they are written here (recalled, not downloaded in this repository's sessions).
PAPER_MODELS = {
    "Qwen/Qwen3-14B-Base": {"model_type": "qwen3", "hidden_size": 5120, "intermediate_size": 17408,
                            "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 8,
                            "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False},
    "Qwen/Qwen2.5-32B": {"model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 27648,
                         "num_hidden_layers": 64, "num_attention_heads": 40, "num_key_value_heads": 8,
                         "vocab_size": 152064, "tie_word_embeddings": False},
}


def paper_shape(path: str):
    from transformers import AutoConfig

    from lpreg.verl.config import shape_of

    d = dict(PAPER_MODELS[path])
    return shape_of(AutoConfig.for_model(d.pop("model_type"), **d))


def compose_run(overrides):
    from conftest import compose_cfg

    return compose_cfg(["backend=verl", *overrides])


PAPER = [("qwen3_14b_on", 1000, 256, 0.01), ("qwen3_14b_off", 1000, 32, 0.01), ("qwen25_32b_on", 800, 256, 0.005),
         ("qwen25_32b_off", 800, 32, 0.005)]


@pytest.mark.parametrize(("experiment", "steps", "mini_batch", "rho"), PAPER, ids=[p[0] for p in PAPER])
def test_paper_experiments_compose_and_pass_verl_validation(tmp_path, experiment, steps, mini_batch, rho):
    """``backend=verl experiment=<paper> regularizer=lpreg`` composes into a verl config that passes verl's own
    validation and the memory check, with the reference recipe's values."""
    from omegaconf import OmegaConf

    from lpreg.verl import config as vconf

    cfg = compose_run([f"experiment={experiment}", "regularizer=lpreg"])
    vc, est = vconf.build(cfg, tmp_path, shape=paper_shape(cfg.model.path))
    get = lambda key: OmegaConf.select(vc, key)
    expected = {
        "data.train_batch_size": 256, "actor_rollout_ref.actor.ppo_mini_batch_size": mini_batch,
        "actor_rollout_ref.rollout.n": 8, "actor_rollout_ref.actor.optim.lr": 1e-6,
        "actor_rollout_ref.actor.optim.weight_decay": 0.0, "actor_rollout_ref.actor.optim.clip_grad": 1.0,
        "actor_rollout_ref.actor.optim.lr_warmup_steps": 0, "data.max_prompt_length": 2048,
        "data.max_response_length": 8192, "data.truncation": "left",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 30720,
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": 30720,
        "actor_rollout_ref.rollout.max_num_batched_tokens": 30720, "actor_rollout_ref.rollout.enforce_eager": True,
        "actor_rollout_ref.actor.use_dynamic_bsz": True, "actor_rollout_ref.model.use_remove_padding": True,
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.85, "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
        "actor_rollout_ref.rollout.temperature": 1.0, "actor_rollout_ref.rollout.top_p": 1.0,
        "actor_rollout_ref.rollout.top_k": -1, "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.actor.policy_loss.loss_mode": "lpreg:lpreg", "actor_rollout_ref.actor.clip_ratio_low": 1.0,
        "actor_rollout_ref.actor.clip_ratio_high": 9.0, "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
        "actor_rollout_ref.actor.use_kl_loss": False, "actor_rollout_ref.actor.entropy_coeff": 0.0,
        "actor_rollout_ref.actor.ppo_epochs": 1, "actor_rollout_ref.actor.shuffle": False,
        "actor_rollout_ref.lpreg.regularizer.rho": rho, "actor_rollout_ref.lpreg.regularizer.kappa": 0.02,
        "actor_rollout_ref.lpreg.regularizer.beta": 1.0, "actor_rollout_ref.model.external_lib": "lpreg.verl.extension",
        "algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": False, "trainer.test_freq": 8,
        "trainer.save_freq": 64, "trainer.val_before_train": False, "trainer.total_training_steps": steps,
        "trainer.nnodes": 8, "trainer.n_gpus_per_node": 8, "trainer.use_v1": True,
        "reward.custom_reward_function.path": "pkg://lpreg.verl.reward",
    }
    assert {k: get(k) for k in expected} == expected
    assert cfg.backend.gpu_memory_gib == 80 and est.train < 80 * 2**30 and est.rollout < 80 * 2**30


def test_verl_own_loss_configs(tmp_path):
    """An arm verl computes as we do composes to verl's own loss with the arm's values in verl's keys."""
    from omegaconf import OmegaConf

    from lpreg.verl import config as vconf

    cfg = compose_run(["experiment=qwen3_14b_off", "regularizer=kl_cov"])
    vc, _ = vconf.build(cfg, tmp_path, shape=paper_shape(cfg.model.path))
    actor = OmegaConf.select(vc, "actor_rollout_ref.actor")
    assert (actor.policy_loss.loss_mode, actor.policy_loss.kl_cov_ratio, actor.policy_loss.ppo_kl_coef) == (
        "kl_cov", pytest.approx(0.002), 1.0)


REFUSED = [
    ([], "model=hf"),
    (["model=hf", f"model.path={TINY}", "task=math", "rollout=hf"], "rollout=vllm"),
    (["experiment=qwen3_14b_on", "trainer.max_tokens_per_micro_batch=0"], "trainer.max_tokens_per_micro_batch"),
    (["experiment=qwen3_14b_on", "trainer.max_tokens_per_micro_batch=4096"], "hold a prompt plus"),
    (["experiment=qwen3_14b_on", "rollout.tis_cap=2"], "rollout.tis_cap"),
    (["experiment=qwen3_14b_off", "regularizer=lpreg", "regularizer.divergence=forward_kl"], "on-policy"),
    (["experiment=qwen3_14b_on", "backend.eval_protocol=best"], "backend.eval_protocol"),
    (["experiment=qwen3_14b_on", "trainer.mini_batches=3"], "trainer.mini_batches"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_refused_before_launch(overrides, message):
    """Configs the verl backend cannot run stop before any work with a message naming the key."""
    from lpreg.checks import ConfigValueError
    from lpreg.verl import config as vconf

    # a rule the config itself states is refused when it is composed; the verl backend's own ones before launch
    with pytest.raises((vconf.VerlConfigError, ConfigValueError), match=message.replace(".", r"\.")):
        vconf.check_lpreg(compose_run(overrides))


@pytest.mark.parametrize(("key", "value"), [("actor_rollout_ref.actor.ulysses_sequence_parallel_size", 2),
                                            ("trainer.use_v1", False), ("actor_rollout_ref.actor.use_kl_loss", True),
                                            ("actor_rollout_ref.actor.ppo_epochs", 2)])
def test_unsupported_verl_settings_refused(verl_base, key, value):
    from omegaconf import OmegaConf

    from lpreg.verl import config as vconf

    vc = OmegaConf.create(OmegaConf.to_container(verl_base))
    OmegaConf.update(vc, key, value)
    with pytest.raises(vconf.VerlConfigError, match=key.replace(".", r"\.")):
        vconf.check_verl(vc)


def test_unknown_verl_override_refused(tmp_path):
    from hydra.errors import ConfigCompositionException

    from lpreg.verl import config as vconf

    cfg = compose_run(["experiment=qwen3_14b_on", "backend.overrides=['actor_rollout_ref.actor.no_such_key=1']"])
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        vconf.build(cfg, tmp_path, shape=paper_shape(cfg.model.path))


def test_memory_check_refuses_what_cannot_fit():
    """Qwen2.5-32B with AdamW on one 80 GB GPU: refused with the estimate and what it was compared with; the
    paper's 64 GPUs fit; too small a vLLM share for the weights is refused too."""
    from lpreg.verl import config as vconf

    shape = paper_shape("Qwen/Qwen2.5-32B")
    cfg = compose_run(["experiment=qwen25_32b_on", "backend.nnodes=1", "backend.gpus_per_node=1",
                       "backend.gpu_memory_gib=80"])
    with pytest.raises(vconf.VerlConfigError, match=r"does not fit: per GPU [0-9.]+ GiB = FSDP states 4[0-9][0-9]\.[0-9] "
                                                    r"GiB .* > 80\.0 GiB \(backend\.nnodes=1 x backend\.gpus_per_node=1"):
        vconf.check_fit(vconf.estimate(shape, cfg), cfg)
    ok = compose_run(["experiment=qwen25_32b_on"])
    vconf.check_fit(vconf.estimate(shape, ok), ok)
    small = compose_run(["experiment=qwen25_32b_on", "backend.gpu_memory_utilization=0.5"])
    with pytest.raises(vconf.VerlConfigError, match="vLLM's share does not hold the model"):
        vconf.check_fit(vconf.estimate(shape, small), small)


def test_model_without_config_is_refused():
    from lpreg.verl import config as vconf

    with pytest.raises(vconf.VerlConfigError, match="model.path='/no/such/model'"):
        vconf.load_shape("/no/such/model")


def test_shape_counts_parameters():
    """The estimate's parameter count from a config is within 1% of the model cards' 14.8 B and 32.5 B."""
    assert paper_shape("Qwen/Qwen3-14B-Base").params / 1e9 == pytest.approx(14.8, rel=0.01)
    assert paper_shape("Qwen/Qwen2.5-32B").params / 1e9 == pytest.approx(32.5, rel=0.01)



# ---- data, prompts, rewards ----------------------------------------------------------------------------------------


def test_parquet_rows_and_verbatim_prompts(tmp_path):
    """The task as verl's parquet: one row per problem with its source and normalized answer; the prompt reaches
    the model as the native trainer sends it: verl's prompt builder with lpreg's pass-through template gives the
    tokens of the plain text, no special tokens (the Qwen builders render a first prompt with the same code; they
    need Qwen's tokenizer, not available offline)."""
    import pandas as pd
    from transformers import AutoTokenizer
    from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder
    from verl.utils.tokenizer.continuous_token_wiring import (
        create_continuous_token_builder,
        get_continuous_token_builder_class,
    )

    from lpreg.tasks import build_task
    from lpreg.verl.config import PASSTHROUGH_TEMPLATE
    from lpreg.verl.data import write_parquet

    cfg = compose_run(["experiment=qwen3_14b_on", "task.max_train=5", "task.max_eval=2"])
    paths = write_parquet(cfg.task, tmp_path)
    train, val = pd.read_parquet(paths["train"]), pd.read_parquet(paths["val"])
    task = build_task(cfg.task)
    assert len(train) == 5 and len(val) == 2 * len(task.eval_sets("test"))
    first = task.train_problems()[0]
    row = train.iloc[0]
    assert row["prompt"][0]["content"] == first.prompt and row["reward_model"]["ground_truth"] == first.answer
    assert sorted(set(val["data_source"])) == sorted(es.source for es in task.eval_sets("test"))
    assert not list(tmp_path.glob("*.tmp"))
    tok = AutoTokenizer.from_pretrained(TINY)
    tok.chat_template = PASSTHROUGH_TEMPLATE
    text = "07+45="
    builder = create_continuous_token_builder(tok)
    assert list(builder.build_initial_tokens([{"role": "user", "content": text}])) == tok.encode(
        text, add_special_tokens=False)
    for family in ("qwen", "qwen3"):
        qwen = get_continuous_token_builder_class(family)
        for method in ("build_initial_tokens", "_render_tokens"):
            assert getattr(qwen, method) is getattr(ContinuousTokenBuilder, method)


def test_reward_function_grades_with_the_budget():
    """verl's custom reward function: our grader of the run's task, through a grading process with its budget."""
    from lpreg.verl import reward

    cfg = compose_run(["experiment=qwen3_14b_on"])
    task = dataclasses.asdict(cfg.task)
    right = reward.compute_score("math500", "so \\boxed{\\frac{1}{2}}", "0.5", {}, task=task, workers=1)
    wrong = reward.compute_score("math500", "\\boxed{3}", "0.5", {}, task=task, workers=1)
    unboxed = reward.compute_score("math500", "1/2", "0.5", {}, task=task, workers=1)
    assert (right["score"], wrong["score"], unboxed["score"]) == (1.0, 0.0, 0.0)
    assert right["acc"] == 1.0 and right["timed_out"] == 0.0
    assert reward.grader_for(task, 1).pool is not None  # a grading process, so the time budget holds
    from omegaconf import OmegaConf

    as_verl_gives_it = OmegaConf.create({"task": task}).task  # verl's reward_kwargs are an OmegaConf node
    assert reward.compute_score("math500", "\\boxed{0.5}", "0.5", {}, task=as_verl_gives_it, workers=0)["score"] == 1
    with pytest.raises(ValueError, match="reward_kwargs.task"):
        reward.compute_score("math500", "", "0", {})


# ---- the launcher, the worker, the task runner -------------------------------------------------------------------

FAKE_VERL = """
import os, sys
from verl.utils.tracking import Tracking
t = Tracking(project_name="p", experiment_name="e", default_backend=["file"])
t.log(data={"val-core/aime24/acc/mean@1": 0.1}, step=0)
for step in (1, 2):
    t.log(data={"actor/grad_norm": 0.1 * step, "critic/score/mean": 0.5, "actor/_lpreg/loss/total/sum": -0.01,
                "actor/_lpreg_rollout/policy/entropy/total": 3.0, "actor/_lpreg_rollout/policy/entropy/weight": 4.0,
                **({"val-core/aime24/acc/mean@1": 0.3} if step == 2 else {})}, step=step)
t.logger["file"].finish()
print("fake verl ran with", sys.argv[1:], flush=True)
if os.environ.get("FAKE_VERL_HANG"):
    import time
    time.sleep(600)
sys.exit(int(os.environ.get("FAKE_VERL_EXIT", "0")))
"""


def fake_popen(monkeypatch, exit_code: int = 0, hang: bool = False):
    """Replace the launch of verl by a script that logs through verl's own file logger (no GPU here)."""
    import subprocess
    import sys

    from lpreg.verl import launch

    real = subprocess.Popen

    def popen(cmd, env, **kw):
        assert cmd[1:3] == ["-m", "lpreg.verl.launch"] and Path(cmd[3]).is_file()
        return real([sys.executable, "-c", FAKE_VERL, *cmd[3:]],
                    env={**env, "FAKE_VERL_EXIT": str(exit_code), "FAKE_VERL_HANG": "1" if hang else ""}, **kw)

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    monkeypatch.setattr(launch, "POLL_S", 0.05)
    monkeypatch.setattr(launch, "environment_problems", lambda: [])  # this machine has no vLLM


def tiny_verl_run():
    return compose_run(["model=hf", f"model.path={TINY}", "rollout=vllm", "task=math", "task.max_train=4",
                        "task.max_eval=2", "trainer.prompts_per_step=4", "trainer.mini_batches=1",
                        "trainer.max_tokens_per_micro_batch=16384", "backend.nnodes=1", "backend.gpus_per_node=1",
                        "trainer.steps=2", "eval.every=2"])


@pytest.mark.slow
def test_train_launches_verl_and_reads_its_log_back(tmp_path, monkeypatch):
    """``train`` writes verl's config and data, launches verl and logs its metrics through the run's tracker under
    our names; evaluations go to ``on_eval`` and the returned history (what summary.json is made of)."""
    from lpreg.harness.tracking import LocalStore
    from lpreg.verl.launch import train

    fake_popen(monkeypatch)
    seen = []
    out = train(tiny_verl_run(), tmp_path, LocalStore(tmp_path), on_eval=lambda step, ev: seen.append(step))
    assert [e["step"] for e in out["evals"]] == seen == [0, 2]
    assert out["evals"][-1]["eval/aime24/acc"] == 0.3 and out["evals"][-1]["eval/mean"] == 0.3
    assert out["last"]["optim/grad_norm"] == pytest.approx(0.2) and out["last"]["policy/entropy"] == 0.75
    lines = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
    assert len(lines) == 3
    for name in ("config.yaml", "data/train.parquet", "data/val.parquet", "metrics.jsonl", "verl.log"):
        assert (tmp_path / "verl" / name).is_file(), name


@pytest.mark.slow
def test_train_reports_a_failed_verl_job(tmp_path, monkeypatch):
    from lpreg.harness.tracking import LocalStore
    from lpreg.verl.launch import train

    fake_popen(monkeypatch, exit_code=3)
    with pytest.raises(RuntimeError, match="(?s)verl exited with status 3.*fake verl ran"):
        train(tiny_verl_run(), tmp_path, LocalStore(tmp_path))


@pytest.mark.slow
def test_a_pruned_trial_stops_the_verl_job(tmp_path, monkeypatch):
    """The sweeper's pruning (``on_eval`` raising) ends the verl job at once, its process group with it."""
    import time

    import optuna

    from lpreg.harness.tracking import LocalStore
    from lpreg.verl import launch

    fake_popen(monkeypatch, hang=True)
    procs = []
    real_stop = launch._stop
    monkeypatch.setattr(launch, "_stop", lambda proc: (procs.append(proc), real_stop(proc)))

    def prune(step, ev):
        raise optuna.TrialPruned(f"step {step}")

    t0 = time.monotonic()
    with pytest.raises(optuna.TrialPruned):
        launch.train(tiny_verl_run(), tmp_path, LocalStore(tmp_path), on_eval=prune)
    assert time.monotonic() - t0 < 120 and procs and procs[0].poll() is not None


def test_environment_check_names_what_is_missing(monkeypatch):
    """Before launch: vLLM and TransferQueue must be importable, and a trl that breaks verl's engine absent."""
    import importlib.util
    import sys

    from lpreg.verl import launch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("vllm", "trl") else real(name))
    problems = launch.environment_problems()
    assert any(p.startswith("vllm is not installed") for p in problems)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "trl" else real(name))
    monkeypatch.setitem(sys.modules, "trl", SimpleNamespace(__version__="1.16.0"))
    assert any("trl 1.16.0 is installed" in p for p in launch.environment_problems())


def test_refused_config_writes_nothing(tmp_path):
    from lpreg.harness.tracking import Tracker
    from lpreg.verl import config as vconf
    from lpreg.verl.launch import train

    cfg = compose_run(["experiment=qwen3_14b_off", "regularizer=lpreg", "regularizer.divergence=forward_kl"])
    with pytest.raises(vconf.VerlConfigError):
        train(cfg, tmp_path, Tracker())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_backend_verl_refuses_with_the_reason(tmp_path, monkeypatch):
    """``python -m lpreg.run backend=verl`` on the embedded model stops before any work, names the key, and
    summary.json says failed."""
    import json

    from conftest import run_cli

    for key in LAUNCHER_ENV:  # this module's process group is not the child's
        monkeypatch.delenv(key, raising=False)
    proc = run_cli(["backend=verl", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "model=hf" in proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "model=hf" in summary["error"]
    assert not (tmp_path / "run" / "verl").exists()


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib.util").util.find_spec("vllm") is not None,
                    reason="vLLM is installed: this test checks the refusal where it is not")
def test_cli_composes_inside_hydra_and_refuses_without_vllm(tmp_path, monkeypatch):
    """A run that passes every config check composes verl's config inside lpreg's Hydra job, then stops before
    writing or launching anything because vLLM is not installed here; summary.json says why."""
    import json

    from conftest import run_cli

    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    proc = run_cli(["backend=verl", "model=hf", f"model.path={TINY}", "rollout=vllm", "task=math",
                    "trainer.max_tokens_per_micro_batch=16384", "backend.nnodes=1", "backend.gpus_per_node=1",
                    f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "vllm is not installed" in proc.stderr, proc.stderr[-2000:]
    assert "[validate_config] All configuration checks passed" in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "vllm is not installed" in summary["error"]
    assert not (tmp_path / "run" / "verl").exists()


def test_worker_and_trainer_classes():
    """lpreg's actor worker keeps verl's dispatch on the methods it extends and pickles by reference (Ray ships
    it to the workers); the trainer puts it in the actor roles; the task runner is verl's with that trainer."""
    import pickle

    from verl.single_controller.base.decorator import MAGIC_ATTR
    from verl.trainer.main_ppo import TaskRunnerV1
    from verl.trainer.ppo.utils import Role
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from lpreg.verl import launch

    cls = extension.LpregActorRolloutRefWorker
    assert issubclass(cls, ActorRolloutRefWorker)
    for name in ("init_model", "compute_log_prob", "update_actor"):
        ours, verls = (repr(getattr(getattr(c, name), MAGIC_ATTR)) for c in (cls, ActorRolloutRefWorker))
        assert ours == verls, name
    assert pickle.loads(pickle.dumps(cls)) is cls

    class Base:
        def _init_resource_pool_mgr(self):
            self.role_worker_mapping = {Role.ActorRollout: "verl's", Role.Critic: "critic"}

    trainer = launch.trainer_class(Base)()
    trainer._init_resource_pool_mgr()
    assert trainer.role_worker_mapping[Role.Critic] == "critic"
    assert trainer.role_worker_mapping[Role.ActorRollout].__ray_actor_class__ is cls
    runner = launch.LpregTaskRunner
    assert issubclass(runner, TaskRunnerV1.__ray_actor_class__) and pickle.loads(pickle.dumps(runner)) is runner
