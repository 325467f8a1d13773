"""``featsieve masks``: print the current mask, follow changes, explain a field."""

from __future__ import annotations

import argparse
import sys
import time

import orjson
from kafka import TopicPartition
from kafka.errors import KafkaError

from connectors import mask_message
from connectors.kafka_io import make_consumer
from connectors.mask_message import MaskMessage
from connectors.subscriber import MaskSubscriber
from daemon.cliparse import UserError
from daemon.config import Settings
from daemon.settings_map import endpoint_from

DEFAULT_TIMEOUT_S = 30.0  # --get and --explain without --timeout


def _left_ms(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))


def _not_in_time(settings: Settings, timeout_s: float, why: str = "") -> UserError:
    where = ",".join(settings.bootstrap)
    return UserError(f"could not read {settings.mask_topic} from Kafka at {where} within --timeout {timeout_s:g} s"
                     f"{': ' + why if why else ' (is Kafka reachable, and the topic there?)'}")


def _history(settings: Settings, model_id: str, timeout_s: float) -> list[MaskMessage]:
    """Every mask of ``model_id`` still in the topic (compaction keeps at least the newest), in order.

    Every step waits at most until ``timeout_s`` after the call (connecting included), then
    raises :class:`UserError`; an absent topic within the time is an empty history.
    """
    deadline = time.monotonic() + timeout_s
    try:
        consumer = make_consumer(endpoint_from(settings), group_id=None, isolation_level="read_committed",
                                 bootstrap_timeout_ms=_left_ms(deadline))
    except KafkaError as exc:
        raise _not_in_time(settings, timeout_s, f"{type(exc).__name__}: {exc}") from None
    try:
        parts = consumer.partitions_for_topic(settings.mask_topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))
            parts = consumer.partitions_for_topic(settings.mask_topic)
        if not parts:
            return []
        tps = [TopicPartition(settings.mask_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps, timeout_ms=_left_ms(deadline))
        out: list[MaskMessage] = []
        key = model_id.encode()
        while any(consumer.position(tp, timeout_ms=_left_ms(deadline)) < end[tp] for tp in tps):
            if time.monotonic() >= deadline:
                raise _not_in_time(settings, timeout_s, "the topic was not read to its end")
            for records in consumer.poll(timeout_ms=min(500, _left_ms(deadline))).values():
                for rec in records:
                    if rec.key == key and rec.value is not None:
                        try:
                            out.append(mask_message.decode(rec.value))
                        except mask_message.MaskFormatError:
                            continue
        return out
    except KafkaError as exc:  # a timeout of a metadata or offsets request
        raise _not_in_time(settings, timeout_s, f"{type(exc).__name__}: {exc}") from None
    finally:
        consumer.close(timeout_ms=1000)


def masks_command(args: argparse.Namespace, settings: Settings) -> int:
    endpoint = endpoint_from(settings)
    timeout = DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout
    if args.explain:
        history = _history(settings, settings.model_id, timeout)
        rows = [m for m in history if args.explain in m.fields]
        if not rows:
            print(f"no published mask of model {settings.model_id} mentions field {args.explain}", file=sys.stderr)
            return 1
        if args.json:
            doc = [{"epoch": m.epoch, "version": m.version, "created_at": m.created_at,
                    **mask_message.field_to_dict(m.fields[args.explain])} for m in rows]
            sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        print(f"field {args.explain} of model {settings.model_id}: {len(rows)} mask versions")
        print(f"{'epoch':>5} {'version':>8} {'keep':>5} {'score':>11} {'z':>8} {'gate_open':>9} {'examples':>9}  reason")
        for m in rows:
            f = m.fields[args.explain]
            gate = "-" if f.gate_open is None else f"{f.gate_open:.3f}"
            z = "-" if f.z is None else f"{f.z:.1f}"
            print(f"{m.epoch:>5} {m.version:>8} {('yes' if f.keep else 'no'):>5} {f.score:>11.6f} {z:>8} {gate:>9} "
                  f"{(f.examples or 0):>9}  {f.reason}")
        return 0

    follow = args.follow is not None
    model = (args.follow if follow else args.get) or settings.model_id
    if not follow:
        sub = MaskSubscriber(model, topic=settings.mask_topic, endpoint=endpoint).start()
        try:
            ready = sub.wait_ready(timeout)
            msg = sub.current()
        finally:
            # the subscriber's thread may be inside a blocking Kafka call (connecting): it is a daemon
            # thread, so we do not wait for it beyond a moment (--timeout is the user's bound)
            sub.stop(timeout=0.5)
        if not ready:
            raise _not_in_time(settings, timeout, ready.reason)
        if msg is None:
            print(f"no mask published for model {model} on {settings.mask_topic}", file=sys.stderr)
            return 1
        if args.json:
            sys.stdout.write(mask_message.encode(msg).decode() + "\n")
        else:
            print(mask_message.render_table(msg))
        return 0

    previous: list[MaskMessage | None] = [None]

    def show(msg: MaskMessage) -> None:
        if args.json:
            sys.stdout.write(mask_message.encode(msg).decode() + "\n")
        else:
            print(f"--- model {msg.model_id} epoch {msg.epoch} version {msg.version}")
            lines = mask_message.diff(previous[0], msg) if previous[0] is not None else [mask_message.render_table(msg)]
            print("\n".join(lines) if lines else "(no change in decisions)")
        sys.stdout.flush()
        previous[0] = msg

    sub = MaskSubscriber(model, topic=settings.mask_topic, endpoint=endpoint, on_update=show).start()
    try:
        if args.timeout is not None:
            ready = sub.wait_ready(args.timeout)
            if not ready:
                raise _not_in_time(settings, args.timeout, ready.reason)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        sub.stop(timeout=0.5)
