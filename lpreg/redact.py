"""Masking secrets in what lpreg writes: run and sweep folders, log files, and the config handed to W&B.

Rules, applied to a copy of every string or mapping on its way to a writer (the config the code uses is never
changed):
- a URL's password is masked: ``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``;
- the value of a URL query parameter whose name looks like a secret is masked (``?password=pw`` -> ``?password=***``);
- the value of a key whose name looks like a secret is masked, in mappings (any value but ``None``) and in text of
  the forms ``key=value`` (Hydra overrides, log lines) and ``key: value``.

A name looks like a secret (:func:`is_secret_key`) when one of its words (split at anything but letters and digits)
is ``password``, ``passwd``, ``pwd``, ``secret``, ``token``, ``auth``, ``credential(s)``, ``apikey``, or ends in
``password``/``secret``/``token``/``apikey``, or when two words read ``api key``, ``access key``, ``private key`` or
``secret key``. So ``wandb.api_key``, ``hf_token`` and ``db_password`` are secrets; ``max_tokens``, ``tokenizer`` and
``perf/tokens_per_s`` are not.

Masking errs on the side of hiding: in ``http://host:8080/a@b`` the text between ``host:`` and the last ``@`` is
masked, although it is a port and a path. The mask is :data:`MASK`; :func:`is_masked` tells whether a URL was masked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

MASK = "***"
_WORDS = {"password", "passwd", "pwd", "secret", "secrets", "token", "auth", "credential",
          "credentials", "apikey"}
_SUFFIXES = ("password", "secret", "token", "apikey")
_KEY_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key")}

# scheme://user:PASSWORD@host... ; the password runs to the last '@' of the whitespace-free token (over-masks, never
# under-masks a password holding an unencoded '@'). ``\`` before ``:``, ``=`` or a space: Hydra's escaping of override
# values (``postgresql\://user\:pw@host``, as the basic sweeper passes them to jobs).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*\\?://[^\s:/@\\]*\\?:)(?P<pw>(?:\\.|\S)*)(?=@)")
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<key>[^=&;#\s\\]+)\\?=)(?P<val>(?:\\.|[^&;#\s\\])*)")
# key=value or key: value, key optionally quoted (Python/JSON reprs in log lines); the key must contain a secret word
# somewhere (is_secret_key decides), and the value runs to the next unescaped whitespace.
_KEY_VALUE = re.compile(
    r"(?P<head>(?P<q>['\"]?)(?P<key>[+~]*[\w.\-/]*?(?:pass|pwd|secret|token|auth|credential|key)[\w.\-/]*)"
    r"(?P=q)\s*(?:\\?=|\\?:\s))\s*(?P<val>(?:\\.|\S)+)", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """Whether a config key (or the last part of a dotted path) names a secret; see the module docstring."""
    words = [w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w]
    if any(w in _WORDS or w.endswith(_SUFFIXES) for w in words):
        return True
    return any(pair in _KEY_PAIRS for pair in zip(words, words[1:]))


def mask_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL and secret query values masked."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _QUERY_PARAM.sub(lambda m: m["head"] + MASK if is_secret_key(m["key"]) and m["val"] else m[0], text)


def redact_text(text: str) -> str:
    """Free text (a log line, a Hydra override, an error message) with URL passwords and secret values masked."""
    text = mask_url(text)
    return _KEY_VALUE.sub(lambda m: m["head"] + MASK if is_secret_key(m["key"]) and not m["val"].startswith(MASK)
                          else m[0], text)


def redact(obj: Any) -> Any:
    """A masked copy of a config-like object: mappings, lists and tuples recursively, strings by
    :func:`redact_text`, and every value (but ``None``) under a secret-looking key replaced by :data:`MASK`."""
    if isinstance(obj, dict):
        return {k: (MASK if v is not None and is_secret_key(k) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def is_masked(url: str) -> bool:
    """Whether ``url`` carries a masked password (it was written by :func:`mask_url` and cannot be used as is)."""
    return f":{MASK}@" in url or f"={MASK}" in url


def unmask(url: str, env_var: str, env=os.environ) -> str:
    """``url`` itself, or, where its password is masked, the URL in ``$env_var`` that masks to the same text."""
    if not is_masked(url):
        return url
    real = env.get(env_var, "")
    if mask_url(real) != url:
        raise ValueError(f"the storage URL {url} is masked: export {env_var} with its full URL")
    return real


def _mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """``record`` with its message and formatted exception masked (:func:`redact_text`)."""
    message = record.getMessage()
    masked = redact_text(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
    return record


def mask_log_records() -> None:
    """Mask every log record of this process when it is created (a log record factory; idempotent).

    A factory, not a handler filter: Hydra replaces the log handlers at each launch and each job start
    (``configure_log``), and the launcher logs each job's overrides in between; the factory survives that."""
    current = logging.getLogRecordFactory()
    if getattr(current, "masks_secrets", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        return _mask_record(current(*args, **kwargs))

    factory.masks_secrets = True
    logging.setLogRecordFactory(factory)


@contextlib.contextmanager
def masked_argv():
    """``sys.argv`` masked for the duration (W&B records the command line as run metadata at ``wandb.init``)."""
    saved = list(sys.argv)
    sys.argv[:] = [redact_text(a) for a in saved]
    try:
        yield
    finally:
        sys.argv[:] = saved


def rewrite_masked_yaml(path: Path) -> bool:
    """Rewrite a YAML file (Hydra's saved config, overrides or multirun config) masked; True if it changed.

    Interpolations (``${...}``) are kept as text; the file is replaced atomically."""
    from omegaconf import OmegaConf

    path = Path(path)
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    masked = redact(data)
    if masked == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(masked)))
    tmp.replace(path)
    return True
