"""Security tier: no secret in any file a run or a sweep writes (nor in the config handed to W&B), checkpoints read
without pickle and with safetensors weights only, Markdown/LaTeX tables that escape untrusted text."""

import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_cli

from lpreg.native import checkpoint
from lpreg.redact import MASK, is_secret_key, mask_url, redact, redact_text

PASSWORD = "pw-7Qz9-leak"  # the password of a storage URL
TOKEN = "tok3kx8leak"  # a value under a secret-looking config key (metrics.sparks is the schema's free-form dict)
TINY = ["trainer.steps=2", "trainer.prompts_per_step=4", "eval.every=1", "eval.samples=0"]
SECRETS = [f"+metrics.sparks.api_token=['{TOKEN}']"]


def files_holding(folder: Path, needles=(PASSWORD, TOKEN)) -> list[str]:
    """Every file under ``folder`` (hidden and binary ones included) whose bytes contain a needle."""
    return [str(p) for p in sorted(folder.rglob("*")) if p.is_file() and any(n.encode() in p.read_bytes() for n in needles)]


def wandb_logs(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in folder.rglob("run-*.wandb")]


# ---- masking rules ---------------------------------------------------------------------------------------------


def test_url_passwords_and_secret_keys_are_masked():
    assert mask_url("postgresql://user:pw@host/db") == "postgresql://user:***@host/db"
    assert mask_url("mysql+pymysql://u:p@ss@h:3306/db?charset=utf8") == "mysql+pymysql://u:***@h:3306/db?charset=utf8"
    assert mask_url("sqlite:///file:/x.db?mode=rwc&password=pw&uri=true") == \
        "sqlite:///file:/x.db?mode=rwc&password=***&uri=true"
    assert mask_url(r"sweep.storage=postgresql\://u\:pw@h/db") == r"sweep.storage=postgresql\://u\:***@h/db"  # Hydra-escaped
    assert redact_text(r"x.api_key=a\ b\=c") == "x.api_key=***"
    for clean in ("postgresql://user@host/db", "sqlite:////abs/x.db", "http://host:8080/x", "sqlite:///x.db?mode=ro"):
        assert mask_url(clean) == clean
    assert redact_text("sweep.storage=postgresql://u:pw@h/db +wandb.api_key=abc max_tokens=5 tokenizer=x") == \
        "sweep.storage=postgresql://u:***@h/db +wandb.api_key=*** max_tokens=5 tokenizer=x"
    assert redact_text("password: hunter2") == "password: ***"
    secret = ["api_key", "apiKey", "WANDB_API_KEY", "hf_token", "db_password", "secret_key", "access_key", "credentials"]
    plain = ["max_tokens", "tokenizer", "perf/tokens_per_s", "keys", "author", "monkey", "storage"]
    assert all(map(is_secret_key, secret)) and not any(map(is_secret_key, plain))
    cfg = {"sweep": {"storage": "postgresql://u:pw@h/db", "seeds": [0]}, "wandb": {"api_key": "k", "entity": None},
           "hf_token": 5, "overrides": ["seed=0", "+x.password=y"], "trainer": {"max_tokens": 7}}
    assert redact(cfg) == {"sweep": {"storage": "postgresql://u:***@h/db", "seeds": [0]},
                           "wandb": {"api_key": MASK, "entity": None}, "hf_token": MASK,
                           "overrides": ["seed=0", "+x.password=***"], "trainer": {"max_tokens": 7}}


def test_log_records_are_masked_whatever_the_handler(tmp_path):
    import logging

    from lpreg.redact import mask_log_records

    saved = logging.getLogRecordFactory()
    handler = logging.FileHandler(tmp_path / "x.log")
    logger = logging.getLogger("lpreg.test_security")
    logger.addHandler(handler)
    try:
        mask_log_records()
        mask_log_records()  # idempotent
        logger.warning("opening %s", f"postgresql://u:{PASSWORD}@h/db")
        try:
            raise RuntimeError(f"token={TOKEN}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
        logging.setLogRecordFactory(saved)
    text = (tmp_path / "x.log").read_text()
    assert "postgresql://u:***@h/db" in text and "token=***" in text
    assert PASSWORD not in text and TOKEN not in text


def test_sweep_storage_comes_from_the_environment_and_never_reaches_jobs(tmp_path):
    from omegaconf import OmegaConf

    from lpreg.harness.pruning import storage_url
    from lpreg.harness.sweep import job_overrides

    sweep = OmegaConf.create({"name": "s", "storage": None})
    url = f"postgresql://u:{PASSWORD}@h/db"
    assert storage_url(sweep, tmp_path, env={"LPREG_SWEEP_STORAGE": url}) == url
    assert storage_url(sweep, tmp_path, env={}) == f"sqlite:///{tmp_path.resolve()}/s.db"
    assert storage_url(OmegaConf.create({"name": "s", "storage": "sqlite:///a.db"}), tmp_path, env={
        "LPREG_SWEEP_STORAGE": url}) == "sqlite:///a.db"  # the command line wins
    assert job_overrides([f"sweep.storage={url}", "seed=0", "-m"]) == ["sweep.storage=postgresql://u:***@h/db", "seed=0"]

    masked = mask_url(url)  # a job (or analysis/plots.py) given the masked URL finds the real one in the environment
    masked_sweep = OmegaConf.create({"name": "s", "storage": masked})
    assert storage_url(masked_sweep, tmp_path, env={"LPREG_SWEEP_STORAGE": url}) == url
    with pytest.raises(ValueError, match="LPREG_SWEEP_STORAGE"):
        storage_url(masked_sweep, tmp_path, env={"LPREG_SWEEP_STORAGE": "postgresql://u:pw@other/db"})


# ---- real runs: every file scanned -----------------------------------------------------------------------------


def test_a_run_writes_no_secret_in_any_file_nor_in_the_wandb_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    url = f"postgresql://lpreg:{PASSWORD}@db.example/optuna"  # a single run does not open the study
    proc = run_cli([*TINY, "+sweep=lpreg_core", f"sweep.storage={url}", *SECRETS, f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path)
    run = tmp_path / "run"
    assert files_holding(run) == []
    assert PASSWORD not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr
    # the values are there, masked: Hydra's saved config, summary.json, and the config W&B received
    config = (run / ".hydra" / "config.yaml").read_text()
    assert "storage: postgresql://lpreg:***@db.example/optuna" in config and "api_token: '***'" in config
    assert "+metrics.sparks.api_token=***" in (run / ".hydra" / "overrides.yaml").read_text()
    assert f"sweep.storage={mask_url(url)}" in json.loads((run / "summary.json").read_text())["overrides"]
    (log,) = wandb_logs(run)
    assert b'"storage":"postgresql://lpreg:***@db.example/optuna"' in log and b'"api_token":"***"' in log
    assert (run / "checkpoints" / "step_000002" / "model.safetensors").exists()  # the scan covered a checkpoint


def test_a_sweep_and_a_multirun_write_no_secret_in_any_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sw = tmp_path / "sw"
    # SQLite takes no user:password, but a URI parameter named password is passed through and ignored: the study
    # opens from a local file through a URL that carries a password, as a PostgreSQL URL would.
    storage = f"sqlite:///file:{sw}/study.db?mode=rwc&password={PASSWORD}&uri=true"
    proc = run_cli(["-m", "+sweep=lpreg_core", "sweep.n_trials=2", "sweep.startup_trials=1", *TINY,
                    f"sweep.storage='{storage}'", *SECRETS, f"hydra.sweep.dir={sw}"], cwd=tmp_path)
    assert json.loads((sw / "study.json").read_text())["storage"] == mask_url(storage)
    assert sorted(p.name for p in sw.glob("trial_*")) == ["trial_0000_s0", "trial_0001_s0"]
    assert (sw / "trials.csv").read_text().count("COMPLETE") == 2  # the sweeper reached the study with the real URL
    assert files_holding(sw) == []
    assert PASSWORD not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr
    assert all(b"password=***" in log and b'"api_token":"***"' in log for log in wandb_logs(sw))

    # a plain multirun: Hydra's basic sweeper also writes multirun.yaml with the whole config
    mr = tmp_path / "mr"
    url = f"postgresql://lpreg:{PASSWORD}@db.example/optuna"
    proc = run_cli(["-m", "+sweep=lpreg_core", "hydra/sweeper=basic", "seed=0", *TINY, f"sweep.storage={url}",
                    *SECRETS, f"hydra.sweep.dir={mr}"], cwd=tmp_path)
    assert "storage: postgresql://lpreg:***@db.example/optuna" in (mr / "multirun.yaml").read_text()
    assert (mr / "multirun_summary.md").exists() and files_holding(mr) == []
    assert PASSWORD not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr


# ---- checkpoints -----------------------------------------------------------------------------------------------


def tiny_model():
    from lpreg.harness.config import TinyModelConfig
    from lpreg.native.models import build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()
    cfg = TinyModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    return build_tiny_model(cfg, len(tok), seed=0), tok


def trainer_state(model, sampler) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[3, 4, 5]])).logits.sum().backward()
    opt.step()
    return {"step": 3, "optimizer": opt.state_dict(), "sampler": sampler.state(), "torch_rng": torch.get_rng_state(),
            "evals": [{"step": 0, "eval/mean": 0.5}], "wandb_run_id": None}


def test_checkpoint_round_trips_without_pickle(tmp_path):
    from lpreg.native.trainer import PromptSampler

    model, tok = tiny_model()
    sampler = PromptSampler(50, seed=3)
    sampler.next(7)
    path = checkpoint.save(tmp_path, 3, model, tok, trainer_state(model, sampler))
    raw = torch.load(path / checkpoint.STATE, weights_only=True)  # the file itself needs no pickle
    assert raw["format"] == checkpoint.FORMAT and isinstance(raw["sampler"]["rng"], dict)
    state = checkpoint.load_state(path)
    resumed = PromptSampler(50, seed=0)
    resumed.load(state["sampler"])
    assert resumed.next(60) == sampler.next(60)
    loaded, _ = checkpoint.load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))


def test_a_checkpoint_of_the_previous_format_is_migrated(tmp_path):
    from lpreg.native.trainer import PromptSampler

    old = PromptSampler(50, seed=5)
    old.next(3)
    folder = tmp_path / "step_000001"
    folder.mkdir()
    torch.save({"step": 1, "sampler": {"rng": old.rng.getstate(), "order": list(old.order)}, "evals": []},
               folder / checkpoint.STATE)  # what lpreg wrote before: the random state as a tuple, no format key
    resumed = PromptSampler(50, seed=0)
    resumed.load(checkpoint.load_state(folder)["sampler"])
    assert resumed.next(60) == old.next(60)


class _Payload:
    """Unpickling this calls ``open(path, "w")``: stands for any code a malicious checkpoint would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_checkpoint_that_needs_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code_ran"
    folder = tmp_path / "step_000001"
    folder.mkdir()
    torch.save({"step": 1, "x": _Payload(marker)}, folder / checkpoint.STATE)
    with pytest.raises(checkpoint.UnsafeCheckpointError, match=re.escape(str(folder / checkpoint.STATE))):
        checkpoint.load_state(folder)
    assert not marker.exists()
    torch.load(folder / checkpoint.STATE, weights_only=False)  # the payload is real: pickle runs it
    assert marker.exists()


def test_pickled_weights_and_unplain_state_are_refused(tmp_path):
    model, tok = tiny_model()
    with pytest.raises(TypeError, match=r"state\['sampler'\]\['rng'\] is a random.Random"):
        checkpoint.save(tmp_path, 1, model, tok, {"step": 1, "sampler": {"rng": random.Random(0)}})
    path = checkpoint.save(tmp_path, 1, model, tok, {"step": 1})
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    with pytest.raises(checkpoint.UnsafeCheckpointError, match="pytorch_model.bin"):
        checkpoint.load_model(path)
    (path / "pytorch_model.bin").unlink()
    (path / "model.safetensors").unlink()
    with pytest.raises(checkpoint.UnsafeCheckpointError, match="no model.safetensors"):
        checkpoint.load_model(path)


# ---- tables for people to open ---------------------------------------------------------------------------------

MARKUP = "x|y <script>alert(1)</script>\n`rm -rf ~`[link](javascript:z)\x1b[31m\\input{/etc/passwd}"


def unescaped_pipes(line: str) -> int:
    return re.sub(r"\\.", "", line).count("|")


def assert_inert(md: str, n_lines: int, n_cols: int) -> None:
    """The last ``n_lines`` lines of ``md`` are table rows of ``n_cols`` cells, with no live HTML, link, code span or
    terminal control sequence."""
    lines = md.rstrip("\n").split("\n")[-n_lines:]
    assert all(unescaped_pipes(ln) == n_cols + 1 for ln in lines), lines
    assert "<script" not in md and "\x1b" not in md and "](" not in md.replace("\\](", "")
    assert not re.search(r"(?<!\\)`", re.sub(r"\\\\", "", md))


def test_markdown_tables_escape_run_names_config_values_and_samples(tmp_path):
    from lpreg.harness.callbacks import COLUMNS, write_summary
    from lpreg.mdtable import md_cell

    for name, reg in (("0_lpreg_s0", "lpreg"), ("1_" + MARKUP.replace("/", "_"), MARKUP)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"regularizer": reg, "seed": 0, "status": "completed"}))
    write_summary(tmp_path)
    md = (tmp_path / "multirun_summary.md").read_text()
    assert_inert(md, n_lines=4, n_cols=len(COLUMNS))
    assert len(md.rstrip("\n").split("\n")) == 4  # two rows: the markup broke no row
    assert "| 0_lpreg_s0 | lpreg | 0 | completed |" in md  # plain names stay readable
    assert "&lt;script&gt;" in md and "\\|" in md and "\\n" in md

    sample = "12</td><img src=x onerror=alert(1)>\n| 5 |`"  # model output, as in samples.jsonl
    assert_inert("| " + md_cell(sample) + " |", n_lines=1, n_cols=1)

    from analysis.plots import table_text

    row = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "seeds": 3, "protocol": "best", "method": "t"}
    table = pd.DataFrame([{"regularizer": MARKUP, "source": "math|`x`", **row},
                          {"regularizer": "none", "source": "mean", **row}])
    assert_inert(table_text(table, "md"), n_lines=4, n_cols=4)
    tex = table_text(table, "tex")
    assert "\\input{" not in tex and r"\textbackslash{}input\{/etc/passwd\}" in tex
