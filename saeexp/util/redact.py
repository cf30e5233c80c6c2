"""Secrets never reach MLflow params, artifacts or printed lines.

Two kinds are recognised: the user-info part of a URI (`https://user:pass@host` -> `https://***@host`) and the
value of any key named as a secret (a word `token`, `password`, `passwd` or `secret` in its name: `hf_token`,
`MLFLOW_TRACKING_PASSWORD`, `apiToken`). `tokens` (a count of tokens, as in `train.tokens`) is not a secret.
"""
from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://user-info@ : everything between '//' and the last '@' before the host's path, query or end
# (Hydra escapes ':' as '\:' when it logs an override: `http\://user\:pass@host`)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*\\?://)(?P<info>[^/?#\s]+)@")
_ASSIGNMENT = re.compile(r"(?P<key>[+~]*[A-Za-z_][\w.]*)=(?P<value>[^\s,'\"\]]+)")
_SECRET_WORDS = {"token", "password", "passwd", "secret", "secrets"}


def is_secret_key(key: str) -> bool:
    """Whether a config key (its last dotted part) names a secret: `hf_token` yes, `train.tokens` no."""
    last = str(key).rsplit(".", 1)[-1]
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", last).lower()  # camelCase -> snake_case
    return any(w in _SECRET_WORDS for w in re.split(r"[^a-z0-9]+", words))


def redact_text(text: str) -> str:
    """Mask the user-info of every URI in a string, and the value of a secret-named `key=value` (an override as
    typed, e.g. `data.hf_token=...`)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", str(text))
    return _ASSIGNMENT.sub(lambda m: f"{m['key']}={MASK}" if is_secret_key(m["key"]) else m[0], text)


def redact(node, key: str = ""):
    """A copy of a config tree (dicts, lists, scalars) with secret-named values and URI user-info masked."""
    if isinstance(node, dict):
        return {k: redact(v, str(k)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact(v, key) for v in node]
    if key and is_secret_key(key) and node is not None:
        return MASK
    return redact_text(node) if isinstance(node, str) else node


def redact_log_records() -> None:
    """Every log record of this process masked as `redact_text` does (Hydra's launchers log each job's overrides
    as typed, a tracking URI's password included); installed once, by the console scripts."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def masked(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        text = record.getMessage()
        if redact_text(text) != text:
            record.msg, record.args = redact_text(text), None
        return record

    masked.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked)
