"""``featsieve`` command line: run, generate, score, masks, bench, evaluate (docs/cli.md).

Sub-commands import what they need lazily, so ``featsieve --help`` and
``featsieve masks`` start fast and never load torch. A user error is one line
on stderr and exit code 2 (daemon/cliparse.py), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from daemon.baked import StateRefused
from daemon.cliparse import (
    Parser,
    add_progress_flag,
    fraction,
    nonneg_float,
    nonneg_int,
    one_line,
    positive_float,
    positive_int,
    user_error_message,
    version,
)
from daemon.config import ConfigError, add_setting_flags, load_settings
from daemon.logs import register_secret, setup_logging

CONNECTION = ("bootstrap", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
              "kafka_sasl_password_file", "kafka_sasl_oauth_token_file", "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile",
              "kafka_ssl_check_hostname", "kafka_client_properties", "log_format", "log_level")
BENCH_SUITES = ("e2e", "score", "gates", "gates-split", "scale", "mi", "instances")
INPUT_FORMATS = ("csv", "jsonl")


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="featsieve",
        description="Online feature selection over Kafka: streaming cardinality-aware MI, OptFS gates, feature masks.",
        epilog="A user error is one line on stderr and exit code 2. Every flag: docs/cli.md.",
    )
    p.add_argument("--version", action="version", version=f"featsieve {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon",
                         usage="%(prog)s [--exit-at-end] [--max-events N] [--duration S] [--reset-state] [--config FILE] "
                               "[SETTING FLAGS: the sections below]")
    run.add_argument("--exit-at-end", action="store_true",
                     help="consume every assigned partition up to its end offset at start, publish, checkpoint, exit 0")
    run.add_argument("--max-events", type=positive_int, default=None, metavar="N",
                     help="stop after exactly N input events in this process (a later run reads the rest)")
    run.add_argument("--duration", type=positive_float, default=None, metavar="S",
                     help="stop S seconds after start, connecting included (exit 2 if never connected)")
    run.add_argument("--reset-state", action="store_true",
                     help="move the state directory's snapshots aside (never deleted) and start from empty state; "
                          "needed when no snapshot is readable, one comes from a newer build, or a setting "
                          "baked into the state changed (docs/internals.md)")
    add_setting_flags(run)

    gen = sub.add_parser("generate", help="synthetic impression/click stream with a ground-truth file")
    gen.add_argument("--preset", default="default", help="field layout and default CTR: small, default, clear, collaborative, click-poor, dominant-id (docs/policy.md)")
    gen.add_argument("--impressions", type=positive_int, default=100_000, metavar="N", help="number of impressions")
    gen.add_argument("--seed", type=nonneg_int, default=7)
    gen.add_argument("--output", metavar="FILE", help="write JSONL events to FILE instead of Kafka")
    gen.add_argument("--ground-truth", metavar="FILE", help="write the ground truth JSON here")
    gen.add_argument("--partitions", type=positive_int, default=1, help="partitions of the input topics if created")
    gen.add_argument("--rate", type=nonneg_float, default=0.0, help="events per second (wall clock) to produce; 0 = as fast as possible")
    gen.add_argument("--event-rate", type=positive_float, default=None,
                     help="impressions per second of event time (sets how much time the stream spans)")
    gen.add_argument("--drift-at", type=fraction, default=None, help="fraction of the stream after which the signal changes")
    gen.add_argument("--bad-fraction", type=fraction, default=0.0, help="share of malformed events mixed in (to test the DLQ)")
    gen.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                     help="seconds to wait for Kafka to answer (not used with --output)")
    add_progress_flag(gen)
    add_setting_flags(gen, names=CONNECTION + ("input_topics",))

    score = sub.add_parser("score", help="offline scoring of a file with the daemon's scorer (JSON out)")
    score.add_argument("--input", required=True, metavar="FILE", help="CSV (with --label) or JSONL events")
    score.add_argument("--label", metavar="COLUMN", help="label column of a CSV file (0/1)")
    score.add_argument("--input-format", choices=INPUT_FORMATS, default=None,
                       help="the input's format; default: by extension (.csv, .jsonl/.ndjson/.json, + .gz), else by content")
    score.add_argument("--format", choices=("json", "table", "tsv"), default="json",
                       help="json: everything; table: for people; tsv: OutRank's feature_singles.tsv columns")
    score.add_argument("--output-dir", metavar="DIR",
                       help="with --format tsv: write feature_singles.tsv and pairwise_ranks.tsv there (default: feature_singles.tsv to stdout)")
    score.add_argument("--pairs", action="store_true", help="score pairs of top fields too")
    add_progress_flag(score)
    score.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="processes counting a CSV in parallel (default: the usable cores; 1 = this "
                            "process only; same result either way; JSONL, .gz and quoted CSV use one)")
    add_setting_flags(score, names=("mi_max_values", "mi_tail_buckets", "pairs_top_n", "max_fields",
                                    "attribution_window_s", "log_format", "log_level"))

    masks = sub.add_parser("masks", help="print or follow published masks")
    mode = masks.add_mutually_exclusive_group()
    mode.add_argument("--get", nargs="?", const="", metavar="MODEL", help="print the current mask (default model id)")
    mode.add_argument("--follow", nargs="?", const="", metavar="MODEL", help="print masks as they change")
    mode.add_argument("--explain", metavar="FIELD", help="show score, gate, evidence and reason history of a field")
    masks.add_argument("--json", action="store_true", help="JSON instead of a table")
    masks.add_argument("--timeout", type=positive_float, default=None, metavar="S",
                       help="seconds to wait for Kafka and the topic (--get, --explain: default 30; "
                            "--follow: until ready, default no limit); exceeded: exit 2")
    add_setting_flags(masks, names=CONNECTION + ("mask_topic", "model_id", "state_dir"))

    bench = sub.add_parser("bench", help="benchmarks (JSON out)")
    bench.add_argument("suite", choices=BENCH_SUITES, help=" | ".join(BENCH_SUITES))
    bench.add_argument("--json", action="store_true", help="print only the JSON object")
    bench.add_argument("--size", choices=("tiny", "small", "full"), default="full", help="problem size")
    bench.add_argument("--outrank-python", metavar="PY", help="python of a venv with OutRank installed (score suite)")
    add_setting_flags(bench, names=CONNECTION)

    ev = sub.add_parser("evaluate", help="prequential comparison of masks on a logged file")
    ev.add_argument("--input", required=True, metavar="FILE", help="CSV (with --label) or JSONL events")
    ev.add_argument("--label", metavar="COLUMN", help="label column of a CSV file (0/1)")
    ev.add_argument("--input-format", choices=INPUT_FORMATS, default=None,
                    help="the input's format; default: by extension, else by content (as score)")
    ev.add_argument("--time-column", metavar="COLUMN",
                    help="CSV column giving the time order (number or ISO 8601); default: file order")
    ev.add_argument("--output-dir", default="featsieve-eval", metavar="DIR",
                    help="where evaluation.json, auc_vs_fields.png and report.md go")
    ev.add_argument("--seed", type=nonneg_int, default=0, help="seeds the models and the random top-k")
    ev.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
                    help="keep ratios of the top-k methods (comma-separated, in (0, 1])")
    ev.add_argument("--methods", default="all,featsieve,featsieve-mi,featsieve-gates,featsieve-both,topk-mi,topk-gates,topk-random",
                    help="methods to compare (all fields is always included)")
    ev.add_argument("--max-rows", type=positive_int, default=None, help="evaluate only the first N examples in time order")
    ev.add_argument("--warmup-rows", type=nonneg_int, default=None,
                    help="examples that only teach the evidence before any model is scored (default: 20%%)")
    ev.add_argument("--batch-rows", type=positive_int, default=1024, help="examples per prequential batch")
    ev.add_argument("--mask-every", type=positive_int, default=5000, help="examples between featsieve mask decisions")
    ev.add_argument("--buckets", type=positive_int, default=8192, help="hashed embedding rows per field of every model")
    ev.add_argument("--dense-lr", type=positive_float, default=3e-2, help="Adam step of the compared models' MLP and bias")
    ev.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    add_progress_flag(ev)
    ev.add_argument("--ground-truth", metavar="FILE", help="a generator's ground truth: check the mask against it")
    add_setting_flags(ev, names=("mi_max_values", "mi_tail_buckets", "max_fields", "attribution_window_s",
                                 "enter_threshold", "exit_threshold", "min_examples", "min_positives", "min_z",
                                 "exit_z", "gate_enter", "gate_exit", "gate_max_fields", "protected_fields",
                                 "policy_mode", "drop_budget", "drop_confidence_z", "drop_hysteresis",
                                 "pair_min_z", "pair_budget", "gate_window", "gate_min_windows", "gate_min_auc",
                                 "log_format", "log_level"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prog = f"featsieve {args.command}"
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        print(f"{prog}: {one_line(str(exc))}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    for warning in settings.deprecations:  # old spellings of renamed settings (config.RENAMED)
        logging.getLogger("featsieve").warning(warning)
    from connectors.kafka_io import (  # loaded by setup_logging already
        ClientPropertyError,
        secret_property,
    )
    try:
        register_secret(settings.sasl_password().reveal())
        for key, value in settings.kafka_client_properties.items():
            if secret_property(key) and isinstance(value, str):
                register_secret(value)  # e.g. ssl_password: never in a log line either
    except OSError as exc:
        print(f"{prog}: invalid setting kafka_sasl_password_file: cannot read it ({exc.strerror})", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, settings)
    except ClientPropertyError as exc:  # a client of generate, masks ... refused a property's value
        print(f"{prog}: invalid setting kafka_client_properties: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except StateRefused as exc:
        print(f"{prog}: refusing to start: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("featsieve").info("interrupted")
        return 130
    except Exception as exc:
        message = user_error_message(exc, args, settings.bootstrap)
        if message is None:
            raise  # a bug: the traceback is what a report needs
        print(f"{prog}: {one_line(message)}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, settings: object) -> int:
    from daemon.config import Settings

    if args.command != "score":  # the offline scorer never loads kafka-python
        from connectors.kafka_compat import install_socket_reader

        # the sub-command's Kafka clients read their sockets in large chunks (connectors/kafka_compat.py;
        # outside the kafka-python range it was verified against, nothing is installed and it says so)
        install_socket_reader()

    assert isinstance(settings, Settings)
    if args.command == "run":
        from daemon.serve import serve

        return serve(settings, exit_at_end=args.exit_at_end, max_events=args.max_events, duration_s=args.duration,
                     reset_state=args.reset_state)
    if args.command == "generate":
        from daemon.tools.generate import generate_command

        return generate_command(args, settings)
    if args.command == "score":
        from daemon.tools.score import score_command

        return score_command(args, settings)
    if args.command == "masks":
        from daemon.masks_cli import masks_command

        return masks_command(args, settings)
    if args.command == "bench":
        from daemon.tools.bench import bench_command

        return bench_command(args, settings)
    if args.command == "evaluate":
        from daemon.tools.evaluate import evaluate_command

        return evaluate_command(args, settings)
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
