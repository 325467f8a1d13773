"""Settings → the configuration objects of connectors and models (one place for the mapping)."""

from __future__ import annotations

from typing import Any

from connectors.codec import Limits
from connectors.kafka_io import KafkaEndpoint, KafkaSecurity, client_properties
from daemon.config import OWNED_CLIENT_CONFIGS, Settings


def endpoint_from(settings: Settings, client_id: str = "featsieve") -> KafkaEndpoint:
    security = KafkaSecurity(
        protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        username=settings.kafka_sasl_username,
        password=lambda: settings.sasl_password().reveal(),
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
        check_hostname=settings.kafka_ssl_check_hostname,
        oauth_token_file=settings.kafka_sasl_oauth_token_file,
    )
    return KafkaEndpoint(
        bootstrap=tuple(settings.bootstrap), security=security, client_id=client_id,
        # validated when the settings were loaded; this only normalises the keys
        properties=client_properties(settings.kafka_client_properties, OWNED_CLIENT_CONFIGS),
    )


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_message_bytes=settings.max_message_bytes,
        max_fields=settings.max_fields_per_event,
        max_field_name_len=settings.max_field_name_len,
        max_value_len=settings.max_value_len,
    )


def mi_config_from(settings: Settings) -> Any:
    from models.mi import MIConfig

    return MIConfig(
        max_values=settings.mi_max_values,
        tail_buckets=settings.mi_tail_buckets,
        block_ms=int(settings.mi_block_s * 1000),
        blocks=settings.mi_blocks,
        pairs_top_n=settings.pairs_top_n,
        max_pairs=settings.max_pairs,
        pair_budget=settings.pair_budget,
        pair_keep_z=settings.pair_min_z,
    )


def policy_config_from(settings: Settings) -> Any:
    from models.policy import PolicyConfig

    return PolicyConfig(
        mode=settings.policy_mode,
        drop_budget=settings.drop_budget,
        drop_confidence_z=settings.drop_confidence_z,
        drop_hysteresis=settings.drop_hysteresis,
        pair_min_z=settings.pair_min_z,
        gate_min_windows=settings.gate_min_windows,
        gate_min_auc=settings.gate_min_auc,
        gate_max_disagreement=settings.gate_max_disagreement,
        enter_threshold=settings.enter_threshold,
        exit_threshold=settings.exit_threshold,
        min_examples=settings.min_examples,
        min_positives=settings.min_positives,
        min_z=settings.min_z,
        exit_z=settings.exit_z,
        max_changes_per_update=settings.max_changes or None,
        protected=frozenset(settings.protected_fields),
        budget_k=settings.budget_k or None,
        drop_redundant=settings.drop_redundant,
        gate_enter=settings.gate_enter,
        gate_exit=settings.gate_exit,
    )


def gate_config_from(settings: Settings) -> Any:
    from models.gates import GateConfig

    return GateConfig(
        max_fields=min(settings.gate_max_fields, settings.max_fields),
        buckets_per_field=settings.gate_buckets,
        window=settings.gate_window,
        closed_card_max=settings.closed_values_max_cardinality,
    )
