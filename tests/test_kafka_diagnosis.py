"""Naming the cause of a Kafka connection failure from kafka-python's own log records (texts as seen
from kafka-python 3.0 against Kafka 4.3), and keeping secrets out of log lines."""

from __future__ import annotations

import io
import logging

import pytest

from connectors.kafka_io import KafkaDiagnosis
from daemon.logs import RedactSecrets

CLOSED = ("<KafkaConnection node_id=bootstrap-0 broker_version=(4, 3) (disconnected)>: "
          "Connection lost: KafkaConnectionError: socket disconnected")
AUTH = ("Abort ([Error 58] SaslAuthenticationFailedError: Authentication failed during authentication "
        "due to invalid credentials with SASL mechanism SCRAM-SHA-512)")
CERT = ("Connection failed: KafkaConnectionError: Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed: self-signed certificate in certificate chain (_ssl.c:1006)")
REFUSED = "Connection failed: KafkaConnectionError: 111 ECONNREFUSED"
TIMEOUT = "Bootstrap failed: KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:9093']"


def feed(diag: KafkaDiagnosis, *texts: str) -> None:
    for text in texts:
        diag.handle(logging.LogRecord("kafka.net.connection", logging.ERROR, __file__, 1, text, None, None))


@pytest.mark.parametrize(
    ("texts", "label"),
    [
        ((AUTH, CLOSED, TIMEOUT), "authentication failed"),
        ((CERT, TIMEOUT), "untrusted broker certificate"),
        ((REFUSED, TIMEOUT), "broker unreachable"),
        ((TIMEOUT,), "broker unreachable"),
    ],
)
def test_the_most_specific_cause_wins(texts: tuple[str, ...], label: str) -> None:
    diag = KafkaDiagnosis()
    feed(diag, *texts)
    cause = diag.cause()
    assert cause is not None and cause.startswith(label), cause


def test_a_close_after_the_handshake_is_a_rejected_login_only_before_we_ever_got_in() -> None:
    diag = KafkaDiagnosis()
    diag.sasl_in_use = True
    feed(diag, CLOSED)
    assert (diag.cause() or "").startswith("authentication failed")
    diag.clear()
    diag.connected_once = True  # a broker restart later: the close is not an authentication failure
    feed(diag, CLOSED, REFUSED)
    assert (diag.cause() or "").startswith("broker unreachable")


def test_other_kafka_warnings_are_forwarded_once_a_minute_and_chatter_dropped() -> None:
    out = io.StringIO()
    forward = logging.StreamHandler(out)
    diag = KafkaDiagnosis(forward)
    for _ in range(5):
        diag.handle(logging.LogRecord("kafka.coordinator", logging.WARNING, __file__, 1, "group %s rebalancing", ("g",), None))
        diag.handle(logging.LogRecord("kafka.net.manager", logging.WARNING, __file__, 1, "Bootstrap %s not ready; waiting", ("b",), None))
    assert out.getvalue().splitlines() == ["group g rebalancing"]


def test_secrets_are_redacted_from_messages_and_tracebacks() -> None:
    redact = RedactSecrets()
    redact.secrets.add("hunter22")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(redact)
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.error("config %s", {"sasl_plain_password": "hunter22"})
        try:
            raise RuntimeError("login hunter22 refused")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "hunter22" not in text and text.count("***") >= 2, text


def test_a_request_cancelled_by_our_own_close_is_not_an_error() -> None:
    """Closing a client with a metadata refresh in flight fails it with ``Cancelled``: not logged.
    The same message with a real error still is."""
    from kafka.errors import Cancelled, KafkaConnectionError

    out = io.StringIO()
    diag = KafkaDiagnosis(logging.StreamHandler(out))
    diag.handle(logging.LogRecord("kafka.cluster", logging.ERROR, __file__, 1, "Metadata refresh: failed %s",
                                  (Cancelled(),), None))
    assert out.getvalue() == ""
    diag.handle(logging.LogRecord("kafka.cluster", logging.ERROR, __file__, 1, "Metadata refresh: failed %s",
                                  (KafkaConnectionError("boom"),), None))
    assert "Metadata refresh: failed" in out.getvalue()


def test_forwarded_kafka_records_respect_the_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    from connectors import kafka_io
    from daemon.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    forward = kafka_io._diagnosis.forward if kafka_io._diagnosis is not None else None
    try:
        setup_logging(level="ERROR")
        logging.getLogger("kafka.coordinator").warning("group %s rebalancing (level test)", "g")
        logging.getLogger("kafka.coordinator").error("group %s failed (level test)", "g")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        kafka_io.install_kafka_diagnosis(forward=forward)
    err = capsys.readouterr().err
    assert "failed (level test)" in err and "rebalancing (level test)" not in err
