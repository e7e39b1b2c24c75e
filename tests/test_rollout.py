"""Rollout rules with the HF engine (the CPU reference of every engine): seeds, stop set, masks, token-id prompts,
engine log-probs; and a real-model run of task=math on a random-init Qwen3 with a tokenizer trained here."""

import json

import pytest
import torch
from conftest import compose_cfg, run_cli

from lpreg.native.models import load_pretrained, tiny_policy_path
from lpreg.native.rollout import build_rollout, cut_at_stop, encode_prompts, request_seed, responses, stop_token_ids
from lpreg.tasks import build_task


@pytest.fixture(scope="module")
def engine():
    cfg = compose_cfg()
    model, tok = load_pretrained(tiny_policy_path(cfg.model, build_task(cfg.task)))
    return build_rollout(cfg.rollout, model, tok, "", 64, seed=0), model, tok


def prompts(tok, n=16):
    return encode_prompts(tok, [f"{i:02d}+{(7 * i) % 100:02d}=" for i in range(n)], max_len=2048)


def test_same_seed_same_rollout_other_seed_other_rollout_and_the_trainer_rng_never_moves(engine):
    eng, _, tok = engine
    p = prompts(tok)
    state = torch.get_rng_state()
    a = eng.generate(p, 4, 1.0, [request_seed(0, 5, i, 0) for i in range(len(p))])
    b = eng.generate(p, 4, 1.0, [request_seed(0, 5, i, 0) for i in range(len(p))])
    c = eng.generate(p, 4, 1.0, [request_seed(1, 5, i, 0) for i in range(len(p))])
    assert torch.equal(torch.get_rng_state(), state)  # sampling draws from its own generator
    assert torch.equal(a.response_ids, b.response_ids) and not torch.equal(a.response_ids, c.response_ids)
    assert len({request_seed(0, 5, 0, 0), request_seed(0, 6, 0, 0), request_seed(1, 5, 0, 0), request_seed(0, 5, 1, 0),
                request_seed(0, 5, 0, 1)}) == 5


def test_each_response_is_sampled_from_its_own_stream_whatever_the_batch(engine):
    """A row's tokens depend on its prompt and seed only: alone, in another order, or beside other rows."""
    eng, _, tok = engine
    p = prompts(tok)
    seeds = [request_seed(0, 3, i, k) for i, k in zip(range(len(p)), [0, 1] * 8)]
    full = eng.generate(p, 4, 1.0, seeds)
    order = list(reversed(range(len(p))))
    rev = eng.generate([p[i] for i in order], 4, 1.0, [seeds[i] for i in order])
    alone = eng.generate([p[5]], 4, 1.0, [seeds[5]])
    n = lambda g, r: int(g.response_mask[r].sum())  # noqa: E731
    for j, i in enumerate(order):
        assert rev.response_ids[j, :n(rev, j)].tolist() == full.response_ids[i, :n(full, i)].tolist()
    assert alone.response_ids[0, :n(alone, 0)].tolist() == full.response_ids[5, :n(full, 5)].tolist()


def test_the_per_row_sampler_draws_from_the_policy(engine):
    """Gumbel-max under greedy decoding samples softmax(logits / T): first-token frequencies over 3,000 streams match
    the model's probabilities."""
    eng, model, tok = engine
    prompt = prompts(tok, 1)[0]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1] / 0.7, -1)
    n = 3000
    gen = eng.generate([prompt] * n, 1, 0.7, [request_seed(9, 0, 0, k) for k in range(n)])
    freq = torch.bincount(gen.response_ids[:, 0], minlength=len(probs)).float() / n
    top = probs.topk(3).indices
    for t in top:  # three standard errors
        assert abs(freq[t] - probs[t]) < 3 * (probs[t] * (1 - probs[t]) / n).sqrt() + 1e-3, (t, freq[t], probs[t])


def test_responses_end_at_the_first_stop_token_of_the_stop_set(engine):
    eng, model, tok = engine
    extra = tok.convert_tokens_to_ids("5")  # a second stop id, as a generation_config may list
    eng.stop_ids = stop_token_ids(tok, model) + [extra]
    try:
        gen = eng.generate(prompts(tok, 64), 3, 1.0, [request_seed(0, 1, i, 0) for i in range(64)])
    finally:
        eng.stop_ids = stop_token_ids(tok, model)
    lengths = gen.response_mask.sum(-1).long().tolist()
    for ids, n, done in zip(gen.response_ids.tolist(), lengths, gen.finished.tolist()):
        generated = ids[:n]
        stops = [j for j, t in enumerate(generated) if t in (tok.eos_token_id, extra)]
        if done:  # finished: exactly one stop token, the last generated one
            assert stops == [n - 1]
        else:  # truncated: cut at max_new_tokens with no stop token
            assert n == 3 and stops == []
    assert any(gen.finished.tolist()) and any(ids[n - 1] == extra for ids, n in zip(gen.response_ids.tolist(), lengths)
                                              if n)


def test_padding_with_the_eos_id_is_never_taken_for_the_end_of_a_response():
    eos = 7  # Qwen base models pad with their EOS id
    cut = [cut_at_stop(row, [eos]) for row in ([3, 4, eos, eos, eos], [3, 4, 5, 6, 2], [eos, eos, eos, eos, eos])]
    assert cut == [([3, 4, eos], True), ([3, 4, 5, 6, 2], False), ([eos], True)]
    ids, mask, finished, _ = responses([c[0] for c in cut], [c[1] for c in cut], pad_id=eos, device="cpu")
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]] and finished.tolist() == [True, False, True]


def test_prompts_are_tokenized_once_without_special_tokens_and_cut_on_the_left(engine):
    _, _, tok = engine
    ids = encode_prompts(tok, ["07+45=", "1+2="], max_len=4)
    assert ids == [tok.encode("+45=", add_special_tokens=False), tok.encode("1+2=", add_special_tokens=False)]
    eng, _, _ = engine
    gen = eng.generate(ids, 2, 0.0, [0, 0])
    assert gen.prompt_ids[0].tolist() == ids[0] and gen.prompt_ids[1].tolist() == ids[1]  # left-padded, no BOS


def test_the_engine_log_probs_match_the_trainer_at_the_sampling_temperature(engine):
    from lpreg.native import tokens, trainer

    eng, model, tok = engine
    p = prompts(tok, 32)
    gen = eng.generate(p, 4, 0.7, [request_seed(3, 1, i, 0) for i in range(len(p))])
    cfg = compose_cfg(["rollout.temperature=0.7", "trainer.mini_batches=1", "trainer.prompts_per_step=4"])
    minis = trainer.micro_batches(gen, cfg)
    olds = trainer.old_pass(model, minis, tokens.old_pass_fns(0.02, 0.1, {}), cfg)
    old_lp = trainer.rollout_flat(olds, "log_prob")
    gap = (gen.rollout_log_prob[gen.response_mask > 0] - old_lp).abs()
    assert gap.max() < 1e-4  # the same distribution: log softmax(logits / T) at the sampled token
    w = trainer.tis_weights(torch.exp(old_lp), gen.rollout_log_prob[gen.response_mask > 0] - 1.0, cap=2.0)
    torch.testing.assert_close(w, torch.full_like(w, 2.0))  # e^1 = 2.72 truncated at the cap


@pytest.fixture(scope="module")
def random_qwen(tmp_path_factory):
    """A random-init Qwen3 and a byte-level BPE tokenizer trained here on the shipped problems (no download)."""
    from lpreg.native.models import save_random_qwen3

    return save_random_qwen3(tmp_path_factory.mktemp("qwen"), 400, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                             tie_word_embeddings=True, max_position_embeddings=4096)


def test_task_math_with_a_real_model_runs_end_to_end_on_the_shipped_data(random_qwen, tmp_path):
    proc = run_cli(["task=math", "model=hf", f"model.path={random_qwen}", "trainer.steps=2", "model.dtype=float32",
                    "trainer.prompts_per_step=2", "rollout.group_size=2", "task.max_response_len=12", "task.max_train=8",
                    "task.max_eval=2", "task.sampled_k=2", "task.max_prompt_len=256", "eval.every=0", "eval.samples=0",
                    "task.reward_workers=1", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    final = summary["final"]
    assert {"eval/aime24/avg@2", "eval/aime24/pass@2", "eval/math500/greedy", "eval/minerva/greedy"} <= set(final)
    assert "eval/math500/avg@4" not in final  # greedy sources get no extra samples unless asked
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and rows[-1]["rollout/logprob_diff_max"] < 1e-3
    assert "values sized for the embedded CPU testbed" in proc.stdout + proc.stderr  # no experiment: a warning


def test_gradient_checkpointing_is_restored_on_resume(random_qwen, tmp_path, monkeypatch):
    """model.gradient_checkpointing applies to the model a resumed run loads from its checkpoint too."""
    from lpreg.harness.tracking import LocalStore
    from lpreg.native import checkpoint, trainer

    seen = []
    original = trainer.check_head
    monkeypatch.setattr(trainer, "check_head", lambda m: (seen.append(m.is_gradient_checkpointing), original(m)))
    common = ["task=math", "model=hf", f"model.path={random_qwen}", "model.dtype=float32",
              "model.gradient_checkpointing=true", "trainer.prompts_per_step=2", "rollout.group_size=2",
              "task.max_response_len=8", "task.max_train=8", "task.max_eval=1", "task.sampled_k=1",
              "task.max_prompt_len=256", "eval.every=0", "eval.at_start=false", "eval.samples=0",
              "task.reward_workers=0", "trainer.checkpoint_every=1"]
    trainer.train(compose_cfg([*common, "trainer.steps=1"]), tmp_path, LocalStore(tmp_path))
    resume = checkpoint.find_resume(tmp_path)
    trainer.train(compose_cfg([*common, "trainer.steps=2", "trainer.resume=true"]), tmp_path,
                  LocalStore(tmp_path, resume.state["step"]), resume)
    assert seen == [True, True]
