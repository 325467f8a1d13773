"""The mask subscriber with the daemon's connection settings: featsieve_client's, kept here for
existing imports (``from connectors.subscriber import MaskSubscriber``).

Serving code should use :class:`featsieve_client.MaskSubscriber` directly: importing this module
also imports the daemon's Kafka layer (:mod:`connectors.kafka_io`), which tunes kafka-python for
the daemon's throughput. This wrapper adds one thing: connection settings given as the daemon's
:class:`~connectors.kafka_io.KafkaEndpoint` or :class:`~connectors.kafka_io.KafkaSecurity`
(the password callable is read at each connection).
"""

from __future__ import annotations

from typing import Any

from connectors.kafka_io import KafkaEndpoint, KafkaSecurity
from featsieve_client import MaskSubscriber as _ClientSubscriber
from featsieve_client.apply import apply
from featsieve_client.subscriber import OnChange, OnUpdate, Readiness

__all__ = ["KafkaSecurity", "MaskSubscriber", "Readiness", "apply"]


class MaskSubscriber(_ClientSubscriber):
    """:class:`featsieve_client.MaskSubscriber` that also takes ``endpoint`` or ``security``."""

    def __init__(
        self,
        model_id: str,
        bootstrap: str | list[str] = "127.0.0.1:9092",
        *,
        topic: str = "featsieve.masks",
        on_update: OnUpdate | None = None,
        on_change: OnChange | None = None,
        endpoint: KafkaEndpoint | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        """``endpoint`` (bootstrap + security + client id) wins over ``bootstrap`` and ``security``."""
        if endpoint is None:
            servers = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
            endpoint = KafkaEndpoint(
                bootstrap=tuple(servers), security=security or KafkaSecurity(), client_id="featsieve-subscriber"
            )
        self.endpoint = endpoint

        def options() -> dict[str, Any]:
            opts = endpoint.options()  # reads the password now, at each connection
            opts.pop("bootstrap_servers", None)
            opts.pop("client_id", None)
            return opts

        super().__init__(
            model_id,
            list(endpoint.bootstrap),
            topic=topic,
            on_change=on_change,
            on_update=on_update,
            kafka_options=options,
            client_id=endpoint.client_id,
        )
