"""What the benchmark suites share: stream sizes, the benchmark stream producer, peak RSS.

Its own module so that bench.py (the suite table and ``featsieve bench``) and the suites
in their own modules (bench_cluster.py, bench_score.py) all import it and none imports
bench.py: no import cycle among the bench modules (an import-linter contract checks it).
"""

from __future__ import annotations

import resource

from daemon.config import Settings

SIZES = {"tiny": 20_000, "small": 100_000, "full": 400_000}


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def produce_stream(
    settings: Settings, topics: tuple[str, str], impressions: int, seed: int = 11, partitions: int = 1
) -> int:
    """Generate the default ~40-field stream into ``topics``; returns the number of events produced."""
    from connectors.codec import encode
    from connectors.kafka_io import TopicSpec, ensure_topics, make_admin, make_producer
    from daemon.settings_map import endpoint_from
    from daemon.tools.synthetic import GeneratorConfig, generate

    endpoint = endpoint_from(settings)
    admin = make_admin(endpoint)
    try:
        ensure_topics(admin, [TopicSpec(t, partitions) for t in topics])
    finally:
        admin.close()
    producer = make_producer(endpoint, linger_ms=50, batch_size=1 << 20, compression_type=None)
    n = 0
    cfg = GeneratorConfig(seed=seed, n_impressions=impressions, preset="default", event_rate=20.0)
    for ev in generate(cfg):
        topic = topics[0] if type(ev).__name__ == "Impression" else topics[1]
        producer.send(topic, key=ev.id.encode(), value=encode(ev))
        n += 1
    producer.flush()
    producer.close()
    return n
