"""The ``archwatch`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from archwatch.settings import EPOCH_WITH_RECOVERY, EPOCH_WITHOUT_RECOVERY
from archwatch.timeutil import TimeFormatError, parse_duration, parse_ts

SLA_FLAGS = {
    "archive_sla": ("--archive-sla", "archiveSla", "P30D"),
    "push_sla": ("--push-sla", "pushSla", "P2D"),
    "check_sla": ("--check-sla", "checkSla", "PT6H"),
    "backup_sla": ("--backup-sla", "backupSla", "P1D"),
    "distribution_sla": ("--distribution-sla", "distributionSla", "P1D"),
    "orphan_grace": ("--orphan-grace", "orphanGrace", "P1D"),
    "lateness": ("--lateness", "lateness", "PT5M"),
}


class CliError(Exception):
    """A user error: printed as one line, exit status 2, never a traceback."""


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except TimeFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _checks(text: str) -> int:
    from archwatch.receivers import MAX_CHECKS

    if not text.isdigit() or not 1 <= int(text) <= MAX_CHECKS:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to {MAX_CHECKS}: {text!r}")
    return int(text)


def _timestamp(text: str) -> int:
    try:
        return parse_ts(text)
    except TimeFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("deadlines (ISO 8601 durations)")
    for dest, (flag, key, default) in SLA_FLAGS.items():
        g.add_argument(flag, dest=dest, type=_duration, default=None,
                       help=f"{key} (default {default})")
    p.add_argument("--receivers", type=Path, help="JSON file of registered receivers")
    p.add_argument("--down-after", dest="down_after", type=_checks, default=None,
                   help="receivers: consecutive missed checks before RECEIVER_DOWN opens, "
                        "where a registration sets none (default 1)")
    p.add_argument("--up-after", dest="up_after", type=_checks, default=None,
                   help="receivers: consecutive good heartbeats before it resolves, where a "
                        "registration sets none (default 1)")
    p.add_argument("--shards", type=int, default=None,
                   help="key shards of each stateful step (default 32)")


def _engine_settings(args: argparse.Namespace, as_of: int | None, live: bool = False):
    from archwatch.receivers import load_registrations
    from archwatch.rules import Sla
    from archwatch.settings import DEFAULT_SHARDS, EngineSettings

    sla = Sla.from_iso(**{key: getattr(args, dest) for dest, (_f, key, _d) in SLA_FLAGS.items()})
    regs = {}
    if args.receivers is not None:
        try:
            regs = load_registrations(args.receivers)
        except (OSError, ValueError) as exc:
            raise CliError(f"--receivers: {exc}") from None
    shards = args.shards or DEFAULT_SHARDS
    if shards < 1:
        raise CliError("--shards must be at least 1")
    return EngineSettings(sla=sla, shards=shards, as_of=as_of, receivers=regs, live=live,
                          down_after=args.down_after or 1, up_after=args.up_after or 1)


def cmd_replay(args: argparse.Namespace) -> int:
    from archwatch.replay import replay
    from archwatch.store import StoreError, open_store

    settings = _engine_settings(args, args.as_of)
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        raise CliError(f"no such file: {', '.join(map(str, missing))}")
    try:
        store = open_store(args.db, args.url)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    rejects = args.rejects or (Path(args.db) / "rejects.jsonl" if args.db else Path("rejects.jsonl"))
    try:
        result = replay(args.files, store, settings, rejects)
    finally:
        store.close()
    print(json.dumps(result.report()))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from archwatch.store import StoreError, open_store

    try:
        store = open_store(args.db, args.url, read_only=True)
        text = store.query_text(args.query, args.format or "PrettyCompact",
                                {} if args.url is None else None)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    sys.stdout.write(text)
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from archwatch.generate import GenerateOptions, generate

    opts = GenerateOptions(cases=args.cases, seed=args.seed, anomaly_rate=args.anomaly_rate,
                           redelivery_rate=args.redelivery_rate, disorder=args.disorder,
                           split_sources=args.split_sources, span_days=args.span_days)
    truth = generate(Path(args.out), opts, progress=sys.stderr.isatty())
    print(json.dumps({"out": str(args.out), "events": truth["events"], "cases": args.cases,
                      "files": truth["files"]}, ensure_ascii=False))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from archwatch.api.app import create_app
    from archwatch.api.settings import Settings

    store = _open_migrated(args)
    app = create_app(Settings(db=args.db, url=args.url), store=store)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _kafka(args: argparse.Namespace):
    from archwatch.connectors.kafka import KafkaSettings

    return KafkaSettings(brokers=args.brokers, topic_prefix=args.topic_prefix)


def _open_migrated(args: argparse.Namespace):
    """The store of ``--db``/``--url`` with its schema up to date, or a one-line error.
    Migrations applied now are logged to stderr (a backfill can take minutes)."""
    import logging

    from archwatch.migrate import migrate
    from archwatch.store import StoreError, open_store

    logging.basicConfig(level=logging.INFO)  # a no-op where the command configured it

    try:
        store = open_store(args.db, args.url)
        migrate(store)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    return store


def _live_start(args: argparse.Namespace):
    """Settings, options and store of `run`/`up`: the broker must answer, topics exist."""
    from archwatch.connectors.kafka import create_topics, wait_for_broker

    settings = _engine_settings(args, None, live=True)
    opts = _live_opts(args)
    try:
        wait_for_broker(opts.kafka.brokers, timeout=args.timeout)
    except ConnectionError as exc:
        raise CliError(str(exc)) from None
    create_topics(opts.kafka, args.partitions)
    return settings, opts, _open_migrated(args)


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown once a live run has stopped cleanly.

    Every row is written by then (Bytewax closes the sink, which writes what it buffered
    and waits; with recovery, writes are synchronous per batch and the snapshots are
    committed; the DLQ is flushed per batch); what remains is the native
    threads of chDB, librdkafka and Bytewax, whose teardown order at interpreter exit
    has crashed the process (SIGSEGV) after a clean stop."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_topics(args: argparse.Namespace) -> int:
    from archwatch.connectors.kafka import create_topics, wait_for_broker

    ks = _kafka(args)
    try:
        wait_for_broker(ks.brokers, timeout=args.timeout)
    except ConnectionError as exc:
        raise CliError(str(exc)) from None
    created = create_topics(ks, args.partitions)
    print(json.dumps({"created": created, "topics": ks.all_topics}))
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from archwatch.connectors.kafka import produce_lines, wait_for_broker

    ks = _kafka(args)
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        raise CliError(f"no such file: {', '.join(map(str, missing))}")
    try:
        wait_for_broker(ks.brokers, timeout=args.timeout)
    except ConnectionError as exc:
        raise CliError(str(exc)) from None

    def lines():
        for f in args.files:
            with open(f, encoding="utf-8") as fh:
                yield from (line.rstrip("\n") for line in fh)

    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit="msg", desc="produce", file=sys.stderr)
    n = produce_lines(lines(), ks, rate=args.rate, progress=bar.update if bar else None)
    if bar is not None:
        bar.close()
    print(json.dumps({"produced": n}))
    return 0


def _live_opts(args: argparse.Namespace):
    from datetime import timedelta

    from archwatch.live import LiveOptions

    recovery = None if args.no_recovery else (
        args.recovery_dir or (Path(args.db) / "recovery" if args.db else Path("recovery")))
    addresses = tuple(a.strip() for a in (getattr(args, "addresses", None) or "").split(",")
                      if a.strip())
    process_id = getattr(args, "process_id", 0) or 0
    if addresses:
        if args.db is not None:
            raise CliError("the processes of a cluster share one store through a server: "
                           "start `archwatch store-server --db DIR` (or use a ClickHouse "
                           "server) and give every process --url instead of --db")
        if not 0 <= process_id < len(addresses):
            raise CliError(f"--process-id {process_id} is not an index of the "
                           f"{len(addresses)} --addresses")
    elif process_id:
        raise CliError("--process-id needs --addresses (every process's host:port)")
    if args.snapshot_file_bytes < 0:
        raise CliError("--snapshot-file-bytes must be 0 (none) or more")
    return LiveOptions(kafka=_kafka(args), workers=args.workers, recovery_dir=recovery,
                       epoch_interval=timedelta(seconds=args.epoch_interval or (
                           EPOCH_WITHOUT_RECOVERY if recovery is None else EPOCH_WITH_RECOVERY)),
                       backup_interval=(timedelta(seconds=args.backup_interval)
                                        if args.backup_interval else None),
                       addresses=addresses, process_id=process_id,
                       snapshot_file_bytes=args.snapshot_file_bytes)


def run_dataflow(run: Callable[..., Any], *args: Any) -> None:
    """``run(*args)`` (archwatch.live.run_live), with a recovery directory that cannot be
    resumed from said in one line, not as Bytewax's chain of tracebacks."""
    from archwatch.blobstore import BlobMissing

    try:
        run(*args)
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, BlobMissing):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise CliError(f"cannot resume from the recovery snapshots: {cause}") from None


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from archwatch.live import run_live, sigterm_as_interrupt
    from archwatch.metrics_server import start_metrics

    logging.basicConfig(level=logging.INFO, format='{"t":"%(asctime)s","level":"%(levelname)s",'
                        '"logger":"%(name)s","msg":"%(message)s"}')
    settings, opts, store = _live_start(args)
    if args.metrics_port:
        start_metrics(args.metrics_port, store, args.metrics_host)
    sigterm_as_interrupt()
    try:
        run_dataflow(run_live, store, settings, opts)
    except KeyboardInterrupt:
        logging.getLogger("archwatch.live").info("stopped")
    finally:
        store.close()
    _exit_now(0)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Broker check, dataflow and API in one process (a chDB store has one owner)."""
    import logging
    import threading

    import uvicorn

    from archwatch.api.app import create_app
    from archwatch.api.settings import Settings
    from archwatch.live import run_live, sigterm_as_interrupt
    from archwatch.notify import load_webhook_file, settings_from, start_thread

    logging.basicConfig(level=logging.INFO)
    try:
        settings_from(args)
        if args.webhooks is not None:
            load_webhook_file(args.webhooks)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    settings, opts, store = _live_start(args)
    if args.metrics_port:
        from archwatch.metrics_server import start_metrics

        start_metrics(args.metrics_port, store, args.metrics_host)
    notifier = None if args.no_notify else start_thread(store, args)
    app = create_app(Settings(db=args.db, url=args.url, brokers=opts.kafka.brokers,
                              topic_prefix=opts.kafka.topic_prefix,
                              lateness_ms=settings.sla.lateness), store=store)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level="info"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    api = threading.Thread(target=server.run, name="api", daemon=True)
    api.start()
    sigterm_as_interrupt()
    try:
        run_dataflow(run_live, store, settings, opts)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        if notifier is not None:
            notifier[1].set()
            notifier[0].join(timeout=15)
        api.join(timeout=10)
        store.close()
    _exit_now(0)
    return 0


def cmd_store_server(args: argparse.Namespace) -> int:
    """Own an embedded store and serve it over ClickHouse's HTTP protocol."""
    import os

    import uvicorn

    from archwatch.chserver import create_app

    password = args.store_password or os.environ.get("ARCHWATCH_STORE_PASSWORD", "")
    if not password:
        raise CliError("a password is needed: set ARCHWATCH_STORE_PASSWORD (or "
                       "store_password in --config)")
    store = _open_migrated(args)
    print(json.dumps({"listening": f"http://{args.host}:{args.port}/", "db": str(args.db),
                      "user": args.user}), flush=True)
    try:
        uvicorn.run(create_app(store, args.user, password), host=args.host, port=args.port,
                    log_level="warning")
    finally:
        store.close()
    _exit_now(0)
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from archwatch.accounts import AccountError, Accounts, Role

    store = _open_migrated(args)
    accounts = Accounts(store)
    try:
        if args.action == "list":
            for a in accounts.list():
                print(json.dumps(a.public(), ensure_ascii=False))
            return 0
        if not args.username:
            raise CliError("a username is needed")
        if args.action == "create":
            if not args.role:
                raise CliError("--role is needed")
            a, secret = accounts.create(args.username, Role(args.role), args.qym or "",
                                        args.dept_code or "", args.system_code or "")
        elif args.action == "rekey":
            a, secret = accounts.rekey(args.username)
        else:
            a = accounts.set_disabled(args.username, args.action == "disable")
            secret = None
    except AccountError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    out = a.public()
    if secret is not None:
        out["token" if a.role is Role.system else "password"] = secret
        print("shown once; store it now:", file=sys.stderr)
    print(json.dumps(out, ensure_ascii=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from archwatch.demo import run_demo

    return run_demo(Path(args.dir), cases=args.cases, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archwatch", description=__doc__)
    p.add_argument("--config", type=Path, help="TOML settings file (flags and ARCHWATCH_* "
                   "environment variables take precedence)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="feed JSONL event files through the dataflow into a store")
    r.add_argument("files", nargs="+", type=Path)
    r.add_argument("--db", type=Path, help="embedded (chDB) store directory")
    r.add_argument("--url", help="ClickHouse server URL instead of --db")
    r.add_argument("--as-of", dest="as_of", type=_timestamp,
                   help="RFC 3339 moment the answer describes (default: latest occurredAt)")
    r.add_argument("--rejects", type=Path, help="rejects file (default DIR/rejects.jsonl)")
    _add_engine_flags(r)
    r.set_defaults(func=cmd_replay)

    s = sub.add_parser("sql", help="run read-only SQL against a store")
    s.add_argument("query")
    s.add_argument("--db", type=Path)
    s.add_argument("--url")
    s.add_argument("--format", help="output format when the query names none (PrettyCompact)")
    s.set_defaults(func=cmd_sql)

    g = sub.add_parser("generate", help="write a synthetic Hangzhou-shaped workload")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--cases", type=int, default=10_000)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--anomaly-rate", dest="anomaly_rate", type=float, default=0.05)
    g.add_argument("--redelivery-rate", dest="redelivery_rate", type=float, default=0.01)
    g.add_argument("--disorder", type=_duration, default="PT2M",
                   help="bound of out-of-order delivery (within the default lateness)")
    g.add_argument("--split-sources", action="store_true",
                   help="also write one file per source (cases, pushes, receipts, ...)")
    g.add_argument("--span-days", dest="span_days", type=int, default=90,
                   help="days the completions spread over (default 90): with --cases, how "
                        "many cases are open at once")
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser("serve", help="serve the HTTP API (OpenAPI docs at /docs)")
    v.add_argument("--db", type=Path)
    v.add_argument("--url")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.set_defaults(func=cmd_serve)

    def kafka_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--brokers", default="127.0.0.1:19092", help="bootstrap servers")
        p.add_argument("--topic-prefix", dest="topic_prefix", default="",
                       help="prefix of every topic name (isolates runs on one broker)")
        p.add_argument("--timeout", type=float, default=30.0, help="broker wait, seconds")

    t = sub.add_parser("topics", help="create the contract's Kafka topics and the DLQ")
    t.add_argument("action", choices=["create"])
    t.add_argument("--partitions", type=int, default=4)
    kafka_flags(t)
    t.set_defaults(func=cmd_topics)

    pr = sub.add_parser("produce", help="publish JSONL events to their Kafka topics")
    pr.add_argument("files", nargs="+", type=Path)
    pr.add_argument("--rate", type=float, help="records per second (load generator)")
    kafka_flags(pr)
    pr.set_defaults(func=cmd_produce)

    for name, helptext, func in (
        ("run", "run the dataflow live on Kafka, writing to the store", cmd_run),
        ("up", "dataflow and API in one process (the embedded default for live use)", cmd_up),
    ):
        rp = sub.add_parser(name, help=helptext)
        rp.add_argument("--db", type=Path)
        rp.add_argument("--url")
        rp.add_argument("-w", "--workers", type=int, default=1)
        rp.add_argument("--partitions", type=int, default=4,
                        help="partitions of topics created on start")
        rp.add_argument("--recovery-dir", dest="recovery_dir", type=Path,
                        help="Bytewax recovery snapshots (default DIR/recovery)")
        rp.add_argument("--no-recovery", dest="no_recovery", action="store_true")
        rp.add_argument("--epoch-interval", dest="epoch_interval", type=float,
                        help=f"seconds between recovery snapshots (default "
                        f"{EPOCH_WITH_RECOVERY:g}; {EPOCH_WITHOUT_RECOVERY:g} with "
                        "--no-recovery, where an epoch only paces the partitions' progress "
                        "reports)")
        rp.add_argument("--backup-interval", dest="backup_interval", type=float, default=0.0,
                        help="seconds a superseded snapshot is kept, so that a copy of the "
                        "recovery partitions taken while running can be restored")
        rp.add_argument("--snapshot-file-bytes", dest="snapshot_file_bytes", type=int,
                        default=64 * 1024,
                        help="recovery snapshot blobs this large or larger are written once "
                        "as files in RECOVERY_DIR/blobs instead of into every epoch's "
                        "snapshot (0: none written; a cluster's processes must share the "
                        "directory)")
        rp.add_argument("--metrics-port", dest="metrics_port", type=int, default=0,
                        help="serve Prometheus /metrics on this port")
        rp.add_argument("--metrics-host", dest="metrics_host", default="127.0.0.1",
                        help="address /metrics listens on (0.0.0.0: reachable by a "
                        "Prometheus on another host or container)")
        if name == "run":
            rp.add_argument("-a", "--addresses", help="a Bytewax cluster: every process's "
                            "host:port, comma-separated, in process-id order (needs --url)")
            rp.add_argument("-i", "--process-id", dest="process_id", type=int, default=0,
                            help="this process's index in --addresses")
        else:
            rp.add_argument("--host", default="127.0.0.1")
            rp.add_argument("--port", type=int, default=8000)
            rp.add_argument("--no-notify", dest="no_notify", action="store_true",
                            help="do not deliver webhooks from this process")
            from archwatch.notify import add_flags as add_notify_flags

            add_notify_flags(rp)
        kafka_flags(rp)
        _add_engine_flags(rp)
        rp.set_defaults(func=func)

    ss = sub.add_parser("store-server", help="own an embedded store and serve it over "
                        "ClickHouse's HTTP protocol (for a cluster's processes: --url)")
    ss.add_argument("--db", type=Path, required=True)
    ss.add_argument("--host", default="127.0.0.1")
    ss.add_argument("--port", type=int, default=8123)
    ss.add_argument("--user", default="archwatch")
    ss.add_argument("--store-password", dest="store_password",
                    help="prefer ARCHWATCH_STORE_PASSWORD (a flag shows in `ps`)")
    ss.set_defaults(func=cmd_store_server, url=None)

    u = sub.add_parser("users", help="open and manage accounts (administrator)")
    u.add_argument("action", choices=["create", "disable", "enable", "rekey", "list"])
    u.add_argument("username", nargs="?")
    u.add_argument("--role", choices=["sysadmin", "city", "district", "department", "system",
                                      "auditor"])
    u.add_argument("--qym")
    u.add_argument("--dept-code", dest="dept_code")
    u.add_argument("--system-code", dest="system_code")
    u.add_argument("--db", type=Path)
    u.add_argument("--url")
    u.set_defaults(func=cmd_users)

    from archwatch.distribution import add_parser as add_distribute_parser

    add_distribute_parser(sub)

    from archwatch.notify import add_parser as add_notify_parser

    add_notify_parser(sub)

    d = sub.add_parser("demo", help="generate a modest workload, replay it, print results")
    d.add_argument("--dir", default="demo-data")
    d.add_argument("--cases", type=int, default=20_000)
    d.add_argument("--seed", type=int, default=7)
    d.set_defaults(func=cmd_demo)
    for sp in sub.choices.values():  # --config is also accepted after the command
        sp.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    return p


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """Defaults from --config FILE and ARCHWATCH_* variables (flags still win)."""
    from archwatch.config import ConfigError, load

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    try:
        values = load(known.config)
    except ConfigError as exc:
        parser.exit(2, f"archwatch: {exc}\n")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for sp in sub.choices.values():
        dests = {a.dest for a in sp._actions}
        sp.set_defaults(**{k: v for k, v in values.items() if k in dests})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    _apply_config(parser, argv)
    args = parser.parse_args(argv)
    if getattr(args, "db", None) is None and getattr(args, "url", None) is None and \
            args.command in ("replay", "sql", "serve", "run", "up", "users"):
        parser.error("one of --db or --url is required")
    try:
        return args.func(args)
    except CliError as exc:
        print(f"archwatch {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
