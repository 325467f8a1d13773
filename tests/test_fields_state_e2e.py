"""On the real broker: junk field names never crowd out real ones (issue 21, item 3), and a state
directory that cannot be used as it is stops the real CLI with one line and exit 2 (item 4)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.codec import Impression, encode
from connectors.join import PENDING_FIXED_BYTES
from connectors.kafka_io import KafkaEndpoint, make_producer
from connectors.state_store import FORMAT_VERSION, MAGIC, SnapshotStore
from daemon.tools.synthetic import GeneratorConfig, generate
from tests.conftest import BIN, ROOT, kcat_read

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def produce(bootstrap: str, topic: str, events: list[Any]) -> None:
    producer = make_producer(KafkaEndpoint(bootstrap=(bootstrap,)), max_request_size=1 << 21)
    for ev in events:
        producer.send(topic, key=ev.id.encode(), value=encode(ev))
    producer.flush()
    producer.close()


def run(bootstrap: str, unique: str, topic: str, state: Path, *extra: str, timeout: float = 600
        ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "featsieve"), "run", "--bootstrap", bootstrap, "--input-topics", topic,
         "--group-id", f"{unique}-{state.name}", "--model-id", unique, "--mask-topic", f"{unique}.masks",
         "--dlq-topic", f"{unique}.dlq", "--state-dir", str(state), "--metrics-port", "0",
         "--gates", "false", "--exit-at-end", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def last_mask(bootstrap: str, topic: str, model: str) -> dict[str, Any]:
    lines = [x for x in kcat_read(bootstrap, topic) if x.startswith(model + "\t")]
    return orjson.loads(lines[-1].split("\t", 1)[1])


def test_ten_thousand_junk_names_keep_every_real_field(bootstrap: str, unique: str, tmp_path: Path) -> None:
    good = list(generate(GeneratorConfig(seed=21, n_impressions=30_000, preset="default", event_rate=20.0)))
    last = max(ev.ts for ev in good if isinstance(ev, Impression))
    # without the clicks that come after the last impression (the generator's tail reaches hours
    # later), so that the last half hour of impressions still waits in the join at the end
    good = [ev for ev in good if ev.ts <= last]
    real = sorted({name for ev in good if isinstance(ev, Impression) for name in ev.features})
    assert len(real) >= 30
    events: list[Any] = []
    k = 0
    for ev in good:
        if isinstance(ev, Impression) and k < 20_000:
            # 10 000 junk names, each in two impressions, in the first two thirds of the stream
            ev = Impression(ev.id, ev.ts, {**ev.features, f"junk_{k // 2:05d}": k})
            k += 1
        events.append(ev)
    # and a name only dead-lettered events carry, 30 times: far beyond max_future_s
    events += [Impression(f"evil{j}", last + 30 * 86_400_000 + j, {"evil": j}) for j in range(30)]
    topic = f"{unique}.events"
    produce(bootstrap, topic, events)

    proc = run(bootstrap, unique, topic, tmp_path / "state")
    assert proc.returncode == 0, proc.stderr[-3000:]

    state = SnapshotStore(tmp_path / "state").load_latest().state  # type: ignore[union-attr]
    assert sorted(state["interner"]["fields"]) == real  # every real field has a column, nothing else
    mask = last_mask(bootstrap, f"{unique}.masks", unique)
    assert sorted(mask["fields"]) == real  # every real field in the mask, no junk, no "evil"
    # memory per pending row: the real fields' hashes, never the junk's
    rows = [f for shard in state["shards"] for _, _, f in shard["join"]["impressions"] if f is not None]
    assert rows and max(map(len, rows)) <= 8 * len(real), [s["join"]["counters"] for s in state["shards"]]
    join = state["shards"][0]["join"]
    assert join["config"]["max_pending_bytes"] == 1 << 30
    dlq = kcat_read(bootstrap, f"{unique}.dlq", fmt="%o\n")
    assert len(dlq) == 30
    counts = dict(state["shards"][0]["admission"]["counts"])
    assert "evil" not in counts and all(name.startswith("junk_") for name in counts)
    print(f"real fields {len(real)}, pending rows {len(rows)}, widest row {max(map(len, rows))} B "
          f"(+{PENDING_FIXED_BYTES} B fixed each), junk names still counted {len(counts)}")


def test_an_unusable_state_dir_stops_the_cli_with_one_line(bootstrap: str, unique: str, tmp_path: Path) -> None:
    events = list(generate(GeneratorConfig(seed=4, n_impressions=3000, preset="small", event_rate=20.0)))
    topic = f"{unique}.events"
    produce(bootstrap, topic, events)
    state = tmp_path / "state"
    first = run(bootstrap, unique, topic, state)
    assert first.returncode == 0, first.stderr[-3000:]
    store = SnapshotStore(state)
    saved = {p: p.read_bytes() for p in store.snapshot_paths()}

    def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = [x for x in proc.stderr.splitlines() if x.startswith("featsieve run: refusing to start:")]
        assert len(line) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        for word in words:
            assert word in line[0], line[0]

    # a changed setting baked into the state: named, with how to migrate
    refused(run(bootstrap, unique, topic, state, "--attribution-window-s", "900"),
            "attribution_window_s is 900.0 but the state was built with 1800.0", "--reset-state")
    # one that can apply does
    applied = run(bootstrap, unique, topic, state, "--max-pending-impressions", "1000")
    assert applied.returncode == 0 and "setting max_pending_impressions changed" in applied.stderr
    saved = {p: p.read_bytes() for p in store.snapshot_paths()}

    # a snapshot from a newer build: refused, and left in place
    newest = max(saved)
    raw = bytearray(saved[newest])
    raw[len(MAGIC) : len(MAGIC) + 2] = (FORMAT_VERSION + 1).to_bytes(2, "big")
    newest.write_bytes(bytes(raw))
    refused(run(bootstrap, unique, topic, state, "--max-pending-impressions", "1000"), "newer featsieve")
    assert newest.read_bytes() == bytes(raw)

    # every snapshot unreadable: refused, not an empty start from offset 0
    for path in saved:
        path.write_bytes(saved[path][:-10])
    refused(run(bootstrap, unique, topic, state, "--max-pending-impressions", "1000"), "is readable")

    # --reset-state: the snapshots are moved aside (kept) and the input is read again
    reset = run(bootstrap, unique, topic, state, "--reset-state")
    assert reset.returncode == 0, reset.stderr[-3000:]
    aside = list(state.glob("reset-*/snapshot-*.bin"))
    assert sorted(p.name for p in aside) == sorted(p.name for p in saved)
    rebuilt = SnapshotStore(state).load_latest()
    assert rebuilt is not None
    join = rebuilt.state["shards"][0]["join"]
    waiting = sum(1 for _, _, f in join["impressions"] if f is not None)  # matched ones are positives
    counted = join["counters"]["positives"] + join["counters"]["negatives"] + waiting
    assert counted == sum(isinstance(e, Impression) for e in events)
