"""Policies: the embedded tiny model (built, warmed up, cached) and any Hugging Face causal LM.

The embedded model is a real ``Qwen2ForCausalLM`` built from a ``Qwen2Config`` with a character-level tokenizer
that is a real ``PreTrainedTokenizerFast``; both are saved and loaded with ``save_pretrained``/``from_pretrained``,
so the real-model path (``model=hf model.path=...``) runs the same code.

The tiny model starts from a supervised warm-up on the task's training split, which turns the random init into a
base policy with a real spread of token probabilities. The task states its warm-up (``Task.warmup_phases``: each phase
a stage of demonstrations, a number of steps and a learning rate; ``task.warmup_*``), trained from the random init of
``model.base_seed``: these phases every run seed shares, the way runs of a real model share its pretrained weights.
Then a seeded stage (``model.seed_steps`` more steps on the task's ``seeded`` demonstrations, batches drawn with
``model.warmup_seed``, the run's seed by default), so that every seed starts from a warm-up of its own and the spread
over seeds includes the warm-up's. Each stage is deterministic, run once, and cached under ``model.cache_dir`` by a
hash of everything that determines it (the architecture, each phase and the demonstrations it trains on, the seed).
The embedded default's stages for seed 0 ship in ``lpreg/assets`` (``python -m lpreg.native.models`` rebuilds them).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

log = logging.getLogger(__name__)

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARS = "0123456789 +-*/=().,?:abcdefghijklmnopqrstuvwxyz"
WARMUP_VERSION = 3  # bump when the warm-up procedure changes, so that old caches are not reused


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A one-character-per-token tokenizer: specials, digits, a few operators and lowercase letters."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )


def build_tiny_model(cfg, vocab_size: int, seed: int) -> Qwen2ForCausalLM:
    """A Qwen2 causal LM from ``cfg`` (a ``TinyModelConfig``); random init from ``seed``."""
    if cfg.vocab_size < vocab_size:
        raise ValueError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {vocab_size} tokens")
    config = Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def _sft_batch(tokenizer, examples: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + target + eos`` ids with labels only on target and eos (-100 elsewhere)."""
    ids, labels = [], []
    for prompt, target in examples:
        p = tokenizer.encode(prompt, add_special_tokens=False)
        t = tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)  # [B, L]
    label_ids = torch.full((len(ids), width), -100)  # [B, L]
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # [B, L]
    for i, (x, y) in enumerate(zip(ids, labels)):
        input_ids[i, : len(x)] = torch.tensor(x)
        label_ids[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return input_ids, mask, label_ids


def supervised_warmup(model, tokenizer, examples: list[tuple[str, str]], steps: int, lr: float, batch_size: int,
                      seed: int) -> list[float]:
    """Teacher-forced cross-entropy on ``(prompt, target)`` pairs for ``steps`` steps, batches drawn with ``seed``;
    returns the loss every 50 steps.

    AdamW (no weight decay), 30 steps of linear warm-up, then a constant rate. Measured on the addition task:
    learning is a sudden phase change (1e-3: 9% greedy at step 400, 93% at 500). A cosine decay to 0 reached a
    similar accuracy but left a policy so sharp that any RL step with lr >= 3e-5 lowered its accuracy; a constant
    rate leaves one that GRPO improves.
    """
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="warm-up", unit="step", leave=False, mininterval=1.0)
    for step in bar:
        batch = rng.sample(examples, min(batch_size, len(examples)))
        input_ids, mask, labels = _sft_batch(tokenizer, batch)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
            bar.set_postfix(loss=losses[-1])
    model.eval()
    return losses


ARCHITECTURE = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "max_positions")


def warmup_key(cfg, task, phases: list, seed: int, digests: dict[str, str] | None = None) -> str:
    """Hash of everything a cached warm-up stage depends on: the architecture, each phase trained so far (its
    ``(stage, steps, lr)`` and a digest of the demonstrations it trains on), the batch size and the seed.

    Keying by the demonstrations themselves, not by task settings, means a stage is rebuilt exactly when what it
    learns from changes: a setting that only a later stage reads leaves the earlier stages' keys alone. ``digests``
    (``stage_digests``) saves building the demonstrations again for each stage of one warm-up."""
    digests = digests or stage_digests(task, phases)
    payload = {k: getattr(cfg, k) for k in ARCHITECTURE}
    payload.update(phases=[[*p, digests[p[0]]] for p in phases], batch=task.cfg.warmup_batch_size, seed=seed,
                   version=WARMUP_VERSION)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def stage_digests(task, phases: list) -> dict[str, str]:
    """The digest of each stage's demonstrations, for the stages of ``phases``."""
    return {stage: demonstrations_digest(task.sft_examples(stage)) for stage in dict.fromkeys(p[0] for p in phases)}


def demonstrations_digest(examples: list[tuple[str, str]]) -> str:
    """A digest of ``(prompt, target)`` demonstrations, order included (the warm-up's batches are drawn from the
    list by index)."""
    return hashlib.sha256(json.dumps(examples).encode()).hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialize the warm-up between processes (parallel Hydra jobs share one cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


ASSETS = Path(__file__).resolve().parents[1] / "assets"  # warm-ups shipped with the project (python -m lpreg.native.models)


def tiny_policy_path(cfg, task, cache_dir: str | Path | None = None) -> Path:
    """Folder of the warmed-up tiny policy for ``task`` and ``model.warmup_seed`` (module docstring): the task's shared
    phases (``Task.warmup_phases``) from the random init of ``model.base_seed``, then the seeded stage, each shipped in
    ``lpreg/assets`` when its key matches the config, else built once (atomically, under a file lock) into
    ``model.cache_dir``."""
    shared = task.warmup_phases()
    phases = shared + ([("seeded", cfg.seed_steps, shared[-1][2])] if cfg.seed_steps else [])
    digests = stage_digests(task, phases)
    path = None
    for i in range(len(phases)):
        seed = cfg.warmup_seed if i >= len(shared) else cfg.base_seed
        path = _stage(cfg, task, phases[: i + 1], seed, path, cache_dir, digests)
    return path


def _stage(cfg, task, phases: list, seed: int, start: Path | None, cache_dir,
           digests: dict[str, str]) -> Path:
    """The warm-up after ``phases`` (the last one trained here, from ``start`` or, for the first, a random init)."""
    stage, steps, lr = phases[-1]
    name = f"tiny-{task.name}-{stage}-{warmup_key(cfg, task, phases, seed, digests)}"
    if cache_dir is None and (ASSETS / name / "config.json").exists():
        return ASSETS / name
    cache = Path(os.path.expanduser(cache_dir or cfg.cache_dir))
    folder = cache / name
    if (folder / "config.json").exists():
        return folder
    with _file_lock(cache / f".{name}.lock"):  # one build per folder at a time; different warm-ups in parallel
        if (folder / "config.json").exists():  # another process finished it while we waited
            return folder
        log.info("warming up the tiny model: %s stage (seed %d), %d supervised steps; cached at %s", stage, seed, steps,
                 folder)
        if start is None:
            tokenizer = build_char_tokenizer()
            model = build_tiny_model(cfg, len(tokenizer), seed=seed)
        else:
            model, tokenizer = load_pretrained(start)
            torch.manual_seed(seed)
        losses = supervised_warmup(model, tokenizer, task.sft_examples(stage), steps, lr, task.cfg.warmup_batch_size,
                                   seed=seed)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-"))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "warmup.json").write_text(json.dumps({"phases": phases, "seed": seed, "losses": losses,
                                                         "model": asdict(cfg)}, indent=1))
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def save_random_qwen3(folder: str | Path, vocab_size: int, seed: int = 0, **shape) -> Path:
    """A random-init Qwen3 (``shape``: Qwen3Config fields) and a byte-level BPE tokenizer of ``vocab_size`` tokens
    trained on the shipped MATH-500 problems, saved with ``save_pretrained``: a real-model stand-in for tests and the
    GPU check, no download. Its pad token is its EOS token, as in Qwen base models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from lpreg.data import resolve_path

    rows = resolve_path("pkg://lpreg/data/math/math500.jsonl").read_text().splitlines()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([json.loads(x)["problem"] for x in rows], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id, **shape))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def load_pretrained(path: str | Path, trust_remote_code: bool = False, use_safetensors: bool | None = None):
    """``(model, tokenizer)`` from a local folder or hub id, with a clear error for a bad path.

    Weights are always loaded in fp32: they are the master weights the optimizer updates (AdamW state in fp32 too);
    ``model.dtype`` is only the compute dtype of autocast (``lpreg/native/trainer.py``). A bf16 copy with bf16 AdamW state
    would leave most weights unchanged at lr 1e-6 (a bf16 step below half an ulp rounds away).

    ``trust_remote_code`` (``model.trust_remote_code``, off unless the user sets it) lets transformers import and
    run Python files that come with the model; ``use_safetensors=True`` refuses weights in any other format."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=use_safetensors
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model.path={str(path)!r} could not be loaded as a Hugging Face causal LM ({err}). "
            "Give a local folder saved with save_pretrained, or a hub id that is in the local HF cache."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.eval()
    return model, tokenizer


def load_policy(cfg, task):
    """The initial policy for a run: ``(model, tokenizer, path it was loaded from)``, prepared for training."""
    if cfg.kind == "tiny":
        path = tiny_policy_path(cfg, task)
        model, tokenizer = load_pretrained(path)
    else:
        path = cfg.path
        model, tokenizer = load_pretrained(path, cfg.trust_remote_code)
    return prepare(model, cfg), tokenizer, str(path)


def prepare(model, cfg):
    """What ``model.*`` asks of a loaded policy, whether it comes from ``model.path`` or from a checkpoint being
    resumed: gradient checkpointing (``model.gradient_checkpointing``, HF models)."""
    if getattr(cfg, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable()
    return model


if __name__ == "__main__":
    # Rebuild the shipped warm-ups: python -m lpreg.native.models [task ...] (default: the embedded default's task).
    # Each task's base stage, and its seeded stage of run seed 0, are written into lpreg/assets.
    import sys

    from lpreg.harness.config import compose_config
    from lpreg.tasks import build_task

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)  # the shipped warm-ups were built single-threaded
    for name in sys.argv[1:] or [None]:
        cfg = compose_config([f"task={name}"] if name else [])
        print(tiny_policy_path(cfg.model, build_task(cfg.task), cache_dir=ASSETS))
