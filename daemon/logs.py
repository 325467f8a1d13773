"""Logging set-up: plain text or JSON lines, one line per event worth logging."""

from __future__ import annotations

import logging
import sys

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class RedactSecrets(logging.Filter):
    """Replaces every registered secret value in a record's final message with ``***``.

    A last line of defence: featsieve never logs secrets itself, but an exception text from a
    library might quote its configuration.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        text = record.getMessage()
        exc_text = self._exc_text(record)
        if not any(s in text or s in exc_text for s in self.secrets):
            return True
        for secret in self.secrets:
            text = text.replace(secret, "***")
            exc_text = exc_text.replace(secret, "***")
        record.msg, record.args = text, None
        if record.exc_info:
            record.exc_info, record.exc_text = None, exc_text
        return True

    @staticmethod
    def _exc_text(record: logging.LogRecord) -> str:
        if record.exc_info:
            return logging.Formatter().formatException(record.exc_info)
        return record.exc_text or ""


REDACT = RedactSecrets()


def register_secret(value: str) -> None:
    """Never show ``value`` in a log line (values shorter than 4 characters are too common to redact)."""
    if len(value) >= 4:
        REDACT.secrets.add(value)


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    from connectors.kafka_io import install_kafka_diagnosis

    handler = logging.StreamHandler(sys.stderr)
    # the level on the handler too: the kafka diagnosis forwards kafka-python's records to it
    # directly, past the root logger's level
    handler.setLevel(level)
    handler.addFilter(REDACT)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every failed connection attempt, several lines each: those go to the
    # diagnosis, which names the cause for the daemon's own one-line messages; its other
    # warnings still show, each at most once a minute
    install_kafka_diagnosis(forward=handler)
    logging.Formatter.converter = __import__("time").gmtime
