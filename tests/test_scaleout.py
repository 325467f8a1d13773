"""Group mode on the real broker: shared partitions, an exact global state, one fenced writer with failover."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from connectors.kafka_io import KafkaEndpoint
from connectors.state_store import SnapshotStore
from connectors.subscriber import MaskSubscriber
from daemon.cluster import global_state_from_topic
from daemon.shards import ShardState, merged_mi
from models.mi import MIConfig, MIState
from tests.conftest import BIN, ROOT, describe_group, featsieve, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _common(bootstrap: str, unique: str) -> list[str]:
    return ["--bootstrap", bootstrap, "--input-topics", f"{unique}.impressions,{unique}.clicks",
            "--model-id", unique, "--mask-topic", f"{unique}.masks", "--dlq-topic", f"{unique}.dlq",
            "--stats-topic", f"{unique}.stats", "--control-topic", f"{unique}.control",
            "--metrics-port", "0", "--gates", "false", "--attribution-window-s", "120"]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "featsieve"), "run", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))  # noqa: SIM115 - closed with the process


def _field_tables(state: MIState) -> dict[tuple[int, str], tuple[object, ...]]:
    out = {}
    for block, fields in state.blocks.items():
        for name, counts in fields.items():
            keys = None if counts.keys is None else counts.keys.tobytes()
            out[(block, name)] = (keys, counts.counts.tobytes(), None if counts.sketch is None else counts.sketch.tobytes())
    return out


def _published(log: Path, epoch: int) -> int:
    """How many masks an instance's log says it published under ``epoch``."""
    return sum(1 for ln in log.read_text().splitlines() if "mask published" in ln and f" epoch={epoch} " in ln)


def _generate(bootstrap: str, unique: str, impressions: int) -> None:
    featsieve("generate", "--bootstrap", bootstrap, "--preset", "default", "--impressions", str(impressions),
              "--event-rate", "5", "--partitions", "6", "--seed", "4",
              "--input-topics", f"{unique}.impressions,{unique}.clicks")


def test_three_instances_over_six_partitions_equal_one_instance(bootstrap: str, unique: str, tmp_path: Path) -> None:
    _generate(bootstrap, unique, 30_000)
    common = _common(bootstrap, unique)
    procs = [
        _start([*common, "--coordination", "group", "--group-id", unique, "--instance-id", f"i{k}",
                "--state-dir", str(tmp_path / f"i{k}"), "--exit-at-end", "--max-poll-records", "500"],
               tmp_path / f"i{k}.log")
        for k in range(3)
    ]
    try:
        for k, p in enumerate(procs):
            assert p.wait(timeout=300) == 0, (tmp_path / f"i{k}.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"i{k}.log").read_text() for k in range(3)]
    # more than one instance did work: the partitions really were shared
    assert sum("partitions assigned: " in text and "impressions:" in text for text in logs) >= 2

    single = tmp_path / "single"
    featsieve("run", *common, "--group-id", f"{unique}-single", "--model-id", f"{unique}-single",
              "--state-dir", str(single), "--exit-at-end", timeout=300)
    loaded = SnapshotStore(single).load_latest()
    assert loaded is not None
    one = merged_mi([ShardState.restore(s) for s in loaded.state["shards"]], MIConfig())
    shards = global_state_from_topic(KafkaEndpoint(bootstrap=(bootstrap,)), f"{unique}.stats", unique)
    assert sorted(s.shard for s in shards) == list(range(6))
    assert {k: v for s in shards for k, v in s.offsets.items()} == {
        k: v for s in loaded.state["shards"] for k, v in ShardState.restore(s).offsets.items()
    }
    group = merged_mi(shards, MIConfig())
    assert _field_tables(group) == _field_tables(one)
    assert [(s.name, s.score, s.z) for s in group.scores(with_pairs=False)] == [
        (s.name, s.score, s.z) for s in one.scores(with_pairs=False)
    ]
    # and the join state too: labelled and pending impressions per shard as in the single run
    def joins(states: list[ShardState]) -> dict[int, tuple[int, int, int]]:
        return {s.shard: (s.join.stats()["positives"], s.join.stats()["negatives"], s.join.pending_impressions)
                for s in states}

    assert joins(shards) == joins([ShardState.restore(s) for s in loaded.state["shards"]])


def test_writer_failover_fences_the_old_writer(bootstrap: str, unique: str, tmp_path: Path) -> None:
    _generate(bootstrap, unique, 20_000)
    common = [*_common(bootstrap, unique), "--coordination", "group", "--group-id", unique,
              "--mask-interval-s", "0.5", "--mask-republish-interval-s", "1", "--writer-session-timeout-s", "6",
              "--checkpoint-interval-s", "1"]
    seen: list[tuple[int, int]] = []
    sub = MaskSubscriber(unique, bootstrap, topic=f"{unique}.masks",
                         on_update=lambda m: seen.append((m.epoch, m.version))).start()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start([*common, "--instance-id", name, "--state-dir", str(tmp_path / name)], log)
             for name, log in zip(("a", "b"), logs, strict=True)]
    def writers() -> list[int]:
        """Instances whose latest word on writing is that they became the writer."""
        out = []
        for k, log in enumerate(logs):
            lines = [ln for ln in log.read_text().splitlines() if "mask writer" in ln and "featsieve:" in ln]
            if lines and "became the mask writer" in lines[-1]:
                out.append(k)
        return out

    def writer_epoch(k: int) -> int | None:
        found = re.findall(r"became the mask writer: .* epoch=(\d+)", logs[k].read_text())
        return int(found[-1]) if found else None

    try:
        wait_until(lambda: all("partitions assigned" in log.read_text() for log in logs), 90,
                   "both instances to hold input partitions")
        # the election has settled: both are members of the writer group and it is stable, so no
        # later join moves the writer (the epoch read below is the one the failover must replace)
        wait_until(lambda: (g := describe_group(bootstrap, f"{unique}.writer"))[0] == "Stable" and len(g[1]) == 2,
                   90, "the writer election group to be stable with both instances")
        wait_until(lambda: len(writers()) == 1 and seen and seen[-1][0] == writer_epoch(writers()[0]), 90,
                   "one writer, whose masks the subscriber sees")
        writer = writers()[0]
        other = 1 - writer
        first_epoch = seen[-1][0]
        # the writer freezes (a zombie: alive, silent), the group moves on without it
        os.kill(procs[writer].pid, signal.SIGSTOP)
        old_masks = _published(logs[writer], first_epoch)
        wait_until(lambda: other in writers(), 60, "the other instance to become the writer")
        wait_until(lambda: seen[-1][0] > first_epoch, 60, "a mask of the new writer's epoch")
        # the zombie wakes up: anything it sends is fenced, and nothing it sent is applied
        os.kill(procs[writer].pid, signal.SIGCONT)
        wait_until(lambda: "no longer the mask writer" in logs[writer].read_text(), 60, "the zombie to step down")
        after = len(seen)
        wait_until(lambda: len(seen) >= after + 2, 60, "two more masks after the zombie stepped down")
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert np.all(np.diff([v for _, v in seen]) > 0)
        # fenced: the zombie published nothing more under its old epoch once it woke
        assert _published(logs[writer], first_epoch) == old_masks
        # every later epoch was taken by one instance in an election (the zombie's rejoin
        # rebalances the election group, which may hand the writer partition to either instance
        # under a new epoch; subscribers follow (epoch, version) either way)
        new_epochs = {e for e, _ in seen if e > first_epoch}
        taken = [int(e) for log in logs
                 for e in re.findall(r"became the mask writer: instance=\S+ epoch=(\d+)", log.read_text())]
        assert new_epochs and new_epochs <= set(taken) and len(taken) == len(set(taken)), (new_epochs, taken)
    finally:
        sub.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    zombie_log = logs[writer].read_text()
    assert "no longer the mask writer" in zombie_log, zombie_log[-3000:]


def _end_offsets(bootstrap: str, unique: str) -> dict[tuple[str, int], int]:
    from kafka import TopicPartition

    from connectors.kafka_io import make_consumer

    consumer = make_consumer(KafkaEndpoint(bootstrap=(bootstrap,)), group_id=None)
    try:
        tps = [TopicPartition(f"{unique}.{kind}", p) for kind in ("impressions", "clicks") for p in range(6)]
        return {(tp.topic, tp.partition): o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


@pytest.mark.xfail(strict=False, reason=(
    "known failure, not yet found (issue 21/26 follow-up): after the kill the survivor's shard "
    "states differ from the reference run in some fields' counts; it failed on loaded machines "
    "since the event-time and field-admission changes of 2026-12-07 and in the clean-clone CI "
    "run of d0e9f62"))
def test_an_instance_killed_mid_stream_is_resumed_exactly_by_the_other(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    _generate(bootstrap, unique, 80_000)  # long enough that the kill lands mid-stream (~40k was read first)
    ends = _end_offsets(bootstrap, unique)
    common = [*_common(bootstrap, unique), "--coordination", "group", "--group-id", unique,
              "--max-poll-records", "100", "--checkpoint-interval-s", "0.5",
              "--group-session-timeout-s", "10"]  # the group notices the crash in 10 s, not 45
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start([*common, "--instance-id", name, "--state-dir", str(tmp_path / name)], log)
             for name, log in zip(("a", "b"), logs, strict=True)]
    endpoint = KafkaEndpoint(bootstrap=(bootstrap,))
    try:
        def owns_and_checkpointed(log: Path) -> bool:
            # both must hold partitions before the kill: a first assignment can be empty (the input
            # topics' metadata not yet known), and checkpoints of nothing prove nothing
            # (and still hold them: a later rebalance may have revoked them and assigned nothing)
            text = log.read_text()
            since = text.rfind(f"partitions assigned: {unique}")
            held = re.findall(r"checkpoint: reason=interval .*offsets=(?!-$)", text[since:], re.MULTILINE)
            return since >= 0 and "partitions revoked" not in text[since:] and len(held) >= 2

        wait_until(lambda: all(owns_and_checkpointed(log) for log in logs), 90,
                   "both instances to hold partitions and checkpoint them")
        published = {k: v for s in global_state_from_topic(endpoint, f"{unique}.stats", unique)
                     for k, v in s.offsets.items()}
        assert sum(published.values()) < sum(ends.values()), "the stream was read before the kill: make it longer"
        procs[1].kill()  # a crash: no goodbye, the group notices after the session timeout
        wait_until(lambda: {k: v for s in global_state_from_topic(endpoint, f"{unique}.stats", unique)
                            for k, v in s.offsets.items()} == ends, 180,
                   "the survivor to publish every partition read to its end", interval=1)
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=120) == 0, logs[0].read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert "resumed from the stats topic" in logs[0].read_text()
    shards = global_state_from_topic(endpoint, f"{unique}.stats", unique)
    assert {k: v for s in shards for k, v in s.offsets.items()} == ends

    single = tmp_path / "single"
    featsieve("run", *_common(bootstrap, unique), "--group-id", f"{unique}-single", "--model-id",
              f"{unique}-single", "--state-dir", str(single), "--exit-at-end", timeout=300)
    loaded = SnapshotStore(single).load_latest()
    assert loaded is not None
    one = merged_mi([ShardState.restore(s) for s in loaded.state["shards"]], MIConfig())
    assert _field_tables(merged_mi(shards, MIConfig())) == _field_tables(one)
