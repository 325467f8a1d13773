"""``featsieve generate``: a seeded synthetic stream to Kafka or a JSONL file, with its ground truth."""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from kafka.errors import KafkaError

from connectors.codec import Click, Impression, encode
from connectors.kafka_io import (
    TopicSpec,
    connection_cause,
    ensure_topics,
    make_admin,
    make_producer,
)
from daemon.cliparse import UserError, progress_wanted
from daemon.config import Settings
from daemon.settings_map import endpoint_from
from daemon.tools.synthetic import GeneratorConfig, generate, ground_truth

log = logging.getLogger("featsieve.generate")

# malformed inputs mixed in by --bad-fraction, one per dead-letter reason family
BAD_EVENTS: tuple[bytes, ...] = (
    b"\xff\xfe not utf-8",
    b"{not json",
    b"[1, 2, 3]",
    b'{"type": "view", "id": "x", "ts": 1}',
    b'{"type": "impression", "ts": 1700000000000, "features": {}}',
    b'{"type": "impression", "id": "x", "ts": "yesterday", "features": {}}',
    b'{"type": "impression", "id": "x", "ts": 1700000000000, "features": {"a": {"nested": 1}}}',
    b'{"type": "impression", "id": "x", "ts": 1700000000000, "features": {"a": NaN}}',
    b'{"type": "labeled", "ts": 1700000000000, "features": {}, "label": 7}',
)


def _config(args: argparse.Namespace) -> GeneratorConfig:
    kwargs: dict[str, object] = {"seed": args.seed, "n_impressions": args.impressions, "preset": args.preset}
    if args.event_rate is not None:
        kwargs["event_rate"] = args.event_rate
    if args.drift_at is not None:
        kwargs["drift_at"] = args.drift_at
    return GeneratorConfig(**kwargs)  # type: ignore[arg-type]


def _with_bad(
    events: Iterator[Impression | Click], fraction: float, seed: int
) -> Iterator[tuple[bool, bytes, bytes]]:
    """(is_click, key, value) triples; a seeded share of malformed values mixed in among them."""
    rng = random.Random(seed)
    for ev in events:
        if fraction and rng.random() < fraction:
            yield False, b"bad", rng.choice(BAD_EVENTS)
        yield isinstance(ev, Click), ev.id.encode(), encode(ev)


def _progress(enabled: bool, impressions: int) -> Any:
    """A bar over the impressions written (clicks ride along), with rate and ETA, on stderr."""
    from connectors.progress import bar

    return bar(impressions, "generate", " impressions", enabled)


def generate_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        config = _config(args)
    except ValueError as exc:  # the generator's own checks of the flags' values
        raise UserError(str(exc)) from None
    if args.ground_truth:
        Path(args.ground_truth).write_bytes(orjson.dumps(ground_truth(config), option=orjson.OPT_INDENT_2))
    bar = _progress(progress_wanted(args), config.n_impressions)
    if args.output:
        n = 0
        with open(args.output, "wb") as fh, bar:
            for ev in generate(config):
                fh.write(encode(ev) + b"\n")
                n += 1
                if isinstance(ev, Impression):
                    bar.update()
        log.info("wrote %d events to %s", n, args.output)
        return 0

    topics = settings.input_topics
    imp_topic = topics[0]
    click_topic = topics[1] if len(topics) > 1 else topics[0]
    endpoint = endpoint_from(settings)
    deadline_ms = int(args.timeout * 1000)
    try:
        admin = make_admin(endpoint, bootstrap_timeout_ms=deadline_ms)
    except KafkaError as exc:
        raise UserError(f"cannot reach Kafka at {','.join(settings.bootstrap)} within --timeout {args.timeout:g} s "
                        f"({connection_cause(exc)})") from None
    try:
        ensure_topics(admin, [TopicSpec(t, args.partitions) for t in dict.fromkeys([imp_topic, click_topic])])
    finally:
        admin.close()
    producer = make_producer(endpoint, linger_ms=50, batch_size=1 << 20, bootstrap_timeout_ms=deadline_ms)
    n = 0
    t0 = time.monotonic()
    events = generate(config)
    with bar:
        for is_click, key, value in _with_bad(events, args.bad_fraction, args.seed):
            producer.send(click_topic if is_click else imp_topic, key=key, value=value)
            n += 1
            if not is_click and key != b"bad":
                bar.update()
            if args.rate and n % 100 == 0:
                ahead = n / args.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=max(args.timeout, 60.0))
    producer.close()
    print(f"produced {n} events to {imp_topic},{click_topic} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0
