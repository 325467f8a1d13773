"""kafka-python's transports read the socket in large chunks (connectors/kafka_compat.py).

The reader is ours; the first test drives it on a real socket pair, the second shows the
library's transports use it once it is installed (tests/test_kafka_compat.py shows importing
installs nothing).
"""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

from kafka.errors import KafkaConnectionError

from connectors import kafka_compat


def test_the_reader_returns_all_that_is_there_then_reports_a_closed_peer() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    transport = SimpleNamespace(_sock=ours)
    try:
        assert kafka_compat.read_available(transport) == (b"", None)  # nothing yet: would block
        payload = bytes(range(256)) * 12_000  # ~3 MB: many reads of RECV_BYTES
        sender = threading.Thread(target=theirs.sendall, args=(payload,))
        sender.start()
        got = b""
        while len(got) < len(payload):
            data, err = kafka_compat.read_available(transport)
            assert err is None
            got += data
        sender.join()
        assert got == payload
        theirs.close()
        data, err = kafka_compat.read_available(transport)
        assert data == b"" and isinstance(err, KafkaConnectionError)
    finally:
        ours.close()


def test_clients_use_the_large_reads() -> None:
    """Installing is what the daemon's commands do; doing it again changes nothing."""
    from kafka.net import transport

    try:
        assert kafka_compat.install_socket_reader()
        assert transport.KafkaTCPTransport._sock_recv is kafka_compat.read_available
        assert transport.KafkaSSLTransport._sock_recv is kafka_compat.read_available
        assert kafka_compat.install_socket_reader()
        assert transport.KafkaSSLTransport._sock_recv is kafka_compat.read_available
        assert kafka_compat.RECV_BYTES >= 64 * 1024
    finally:
        kafka_compat.uninstall_socket_reader()
    assert transport.KafkaTCPTransport._sock_recv is not kafka_compat.read_available


def test_a_read_scheduled_before_the_client_closed_the_transport_is_not_an_error() -> None:
    """Closing a client sets the transport's socket to None; a read already scheduled then
    raised AttributeError in kafka-python's task loop ('ERROR kafka.net.selector: Unhandled
    exception in task', a traceback, seen in `featsieve masks --get` and the demo)."""
    data, err = kafka_compat.read_available(SimpleNamespace(_sock=None))
    assert data == b"" and isinstance(err, KafkaConnectionError)
