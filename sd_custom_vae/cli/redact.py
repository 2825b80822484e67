"""No secret is printed: Hub tokens are masked in everything a command writes to the terminal.

A server may echo a request's ``Authorization`` header in its error text, a library may put a token
in a URL, a user may type a token where an argument goes: ``redact`` masks the exact tokens in use and
anything shaped like a Hugging Face token, a bearer credential or a URL's ``user:password@``, wherever it
appears, and nothing else (``HF_ENDPOINT`` and ``hf_hub_download`` are words, and so is a "token" of a few
letters). Log records are masked as they are made (``redacting_logs``): a library's logger (huggingface_hub's
retry warnings name the request's URL) may hold its own handle on the terminal, past the redacting streams.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

MASK = "hf_***"
# Hugging Face tokens (lower-case hf_, then 16 or more letters and digits, some upper-case or digits: real ones
# have 34) and bearer credentials in headers or their echoes
TOKEN_PATTERNS = re.compile(r"\bhf_(?=[A-Za-z0-9_]*[A-Z0-9])[A-Za-z0-9_]{16,}"
                            r"|(?i:(?<=Bearer )[^\s'\",;]+|(?<=token=)[^\s&'\",;]+)")
# the credentials of a URL (scheme://user:password@host): HF_ENDPOINT may carry a mirror's
URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@]+@")
MIN_SECRET = 8  # a known "token" shorter than this is no real token, and masking it would mask words


def known_secrets(*extra: str | None) -> set[str]:
    """The tokens this process may use: given ones, HF_TOKEN, and the one `hf auth login` stored."""
    secrets = {value for value in (*extra, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN"))
               if value}
    try:
        from huggingface_hub import get_token

        stored = get_token()
    except Exception:  # noqa: BLE001 - an unreadable token file is not this module's business
        stored = None
    if stored:
        secrets.add(stored)
    try:
        endpoint = urlsplit(os.environ.get("HF_ENDPOINT", ""))
        secrets.update(value for value in (endpoint.username, endpoint.password) if value)
    except ValueError:  # not a URL: huggingface_hub will say so
        pass
    return {s for s in secrets if len(s) >= MIN_SECRET}


def redact(text: str, secrets: set[str] = frozenset()) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return URL_CREDENTIALS.sub("***@", TOKEN_PATTERNS.sub(MASK, text))


@contextlib.contextmanager
def redacting_logs(secrets: set[str]) -> Iterator[None]:
    """Every log record made in the block, by any logger, is masked as it is made: its message, its arguments and
    the traceback it carries, whatever handler then writes it wherever."""
    make_record = logging.getLogRecordFactory()

    def redacted_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.msg, record.args = redact(record.getMessage(), secrets), ()
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        return record

    logging.setLogRecordFactory(redacted_record)
    try:
        yield
    finally:
        logging.setLogRecordFactory(make_record)


class Redacting(io.TextIOBase):
    """A text stream that masks secrets in every write before passing it on."""

    def __init__(self, stream, secrets: set[str]):
        self.stream, self.secrets = stream, secrets

    def write(self, text: str) -> int:
        self.stream.write(redact(text, self.secrets))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")

    def fileno(self) -> int:
        return self.stream.fileno()
