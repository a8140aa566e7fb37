"""The cluster variant of the single-node migrations (scale-out past one ClickHouse server).

``clickhouse/migrations/*.sql`` describe one server: (Replacing)MergeTree tables. On a
ClickHouse cluster (shards x replicas, ClickHouse Keeper) each table becomes two:

- ``<name>_local`` — created ``ON CLUSTER`` on every node with the same columns, indexes,
  ``ORDER BY`` and engine arguments, as ``Replicated<Engine>('/clickhouse/tables/{shard}/
  <db>/<name>_local', '{replica}', <original arguments>)``;
- ``<name>`` — a ``Distributed(<cluster>, <db>, <name>_local, <sharding key>)`` table under
  the original name, so the engine, the API and auditors keep using the names they know.

The sharding key keeps every version of a row on one shard, which is what makes
``FINAL`` (applied per shard) collapse versions and tombstones correctly, and it
co-locates each case's ``case_state``, ``anomaly`` and ``event_log`` rows (and each
receiver's rows) on the same shard. ``ALTER TABLE ... ADD COLUMN`` and the other column
changes go to the ``_local`` table and then to the ``Distributed`` one; other ALTERs
(indexes, TTL, settings) only concern the ``_local`` tables. A few small tables
(``NOT_DISTRIBUTED``: ``schema_migrations``, ``account``) are instead replicated whole to
every node under their own name.

``python -m archwatch.cluster_schema [--cluster NAME] [--database DB] [--since N]`` prints
the cluster SQL of all migrations (or of those numbered N or later), each followed by the
row that records it in ``schema_migrations`` (so ``migrate()`` in ``archwatch serve`` and
``run`` sees it applied). See docs/cluster.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping, Sequence

from archwatch.migrate import Migration, load_migrations

# Each distributed table's sharding key: a function of columns that never change for a
# row's identity (its ORDER BY key, or for anomaly the case/receiver its id hashes).
SHARDING_KEYS: dict[str, str] = {
    "case_state": "cityHash64(case_no)",
    # a case's keys (0016; dropped by 0017), written by case_key_mv beside case_state's rows
    "case_key": "cityHash64(case_no)",
    # case_state by case number (0017; dropped by 0018), written by case_by_no_mv beside
    # its source rows
    "case_by_no": "cityHash64(case_no)",
    # receiver anomalies (RECEIVER_DOWN) have an empty case_no: shard them by receiver
    "anomaly": "cityHash64(if(case_no = '', receiver_id, case_no))",
    # 0013's new layout of anomaly, before it is swapped in: the same rows, the same shards
    "anomaly_next": "cityHash64(if(case_no = '', receiver_id, case_no))",
    # anomaly by case number (0017; dropped by 0018), written by anomaly_by_case_mv beside
    # its source rows
    "anomaly_by_case": "cityHash64(if(case_no = '', receiver_id, case_no))",
    # a case's state and anomalies rendered (0018), written by case_doc_state_mv and
    # case_doc_anomaly_mv beside their source rows: case_state's shard, and anomaly's for a
    # case's anomalies (the only ones it keeps), both by the case number
    "case_doc": "cityHash64(case_no)",
    # append-only transitions of an anomaly, beside the anomaly itself; the live feed reads
    # WHERE seq > cursor ORDER BY seq across all shards
    "anomaly_feed": "cityHash64(if(case_no = '', receiver_id, case_no))",
    # entity is the caseNo (or the receiverId): the same shard as the case's other rows
    "event_log": "cityHash64(entity)",
    # partial totals per dataflow shard; the restart reconcile reads WHERE src = ...
    "kpi_task": "cityHash64(src)",
    "anomaly_count": "cityHash64(src)",
    # one row per item (the sum of its kpi_task partials): every version on one shard
    "kpi_item": "cityHash64(year, qym, dept_code, system_code, task_id, system_level)",
    "receiver_status": "cityHash64(receiver_id)",
    "receiver": "cityHash64(receiver_id)",
    # the distribution queue: one row per distributionNo; endpoints beside their receiver
    "distribution": "cityHash64(distribution_no)",
    "receiver_endpoint": "cityHash64(receiver_id)",
    # append-only (MergeTree): by actor, so a retried insert lands where its first try did
    "audit_log": "cityHash64(actor)",
    # webhook delivery: one outbox row per notification, one delivery row per
    # (webhook, notification), beside its notification
    "alert_notification": "cityHash64(notification_id)",
    "webhook_delivery": "cityHash64(notification_id)",
}

# Small tables replicated whole to every node instead of sharded: bookkeeping, and the
# accounts every API node reads at each login, the knowledge articles, the webhook
# subscriptions, the deliverer's feed cursor and the workers' leases (no fan-out across shards).
NOT_DISTRIBUTED: frozenset[str] = frozenset({"schema_migrations", "account", "article",
                                              "webhook", "notifier_cursor",
                                              "worker_lease"})

# The cluster form of the bookkeeping table that archwatch.migrate creates on one node:
# one replicated copy shared by the whole cluster (no {shard} in its Keeper path).
_SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER {cluster}\n"
    "(\n"
    "    version UInt32,\n"
    "    name String,\n"
    "    checksum String,\n"
    "    applied_at DateTime DEFAULT now()\n"
    ")\n"
    "ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{db}/schema_migrations', "
    "'{{replica}}')\n"
    "ORDER BY version"
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = r"(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)"
_CREATE = re.compile(
    r"^CREATE\s+TABLE\s+(?P<ine>IF\s+NOT\s+EXISTS\s+)?" + _NAME + r"\s*\(", re.I | re.S)
_CREATE_MV = re.compile(
    r"^CREATE\s+MATERIALIZED\s+VIEW\s+(?P<ine>IF\s+NOT\s+EXISTS\s+)?" + _NAME + r"\s+TO\s+"
    + _NAME.replace("name", "target") + r"\s+AS\s+(?P<select>SELECT\b.*)$", re.I | re.S)
_JOIN = re.compile(r"\bJOIN\b", re.I)
_ALTER = re.compile(r"^ALTER\s+TABLE\s+" + _NAME + r"\s+(?P<cmds>.+)$", re.I | re.S)
_DROP = re.compile(r"^DROP\s+TABLE\s+(?P<ie>IF\s+EXISTS\s+)?" + _NAME + r"\s*$", re.I | re.S)
_DROP_VIEW = re.compile(r"^DROP\s+VIEW\s+(?P<ie>IF\s+EXISTS\s+)?" + _NAME + r"\s*$",
                        re.I | re.S)
_INSERT_SELECT = re.compile(r"^INSERT\s+INTO\s+" + _NAME + r"(?=\s*(\(|SELECT\b))",
                            re.I | re.S)
_EXCHANGE = re.compile(r"^EXCHANGE\s+TABLES\s+" + _NAME.replace("name", "a") + r"\s+AND\s+"
                       + _NAME.replace("name", "b") + r"\s*$", re.I | re.S)
_FROM_TABLE = re.compile(r"(\bFROM\s+)([A-Za-z_][A-Za-z0-9_.]*)", re.I)
_ENGINE = re.compile(r"^\s*ENGINE\s*=\s*(?P<engine>[A-Za-z_][A-Za-z0-9_]*)\s*", re.I | re.S)
_COLUMN_CMD = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.I)
_NOT_COLUMN = re.compile(r"^(INDEX|PROJECTION|CONSTRAINT)\b", re.I)
_ON_CLUSTER = re.compile(r"\bON\s+CLUSTER\b", re.I)


class ClusterSchemaError(ValueError):
    """A migration statement the cluster translation does not know how to rewrite."""


# --------------------------------------------------------------------------- lexing


def _scan(sql: str) -> Iterable[tuple[int, str, str]]:
    """Yield ``(index, char, kind)`` for each character; ``kind`` is ``code``, ``quoted``
    (string literals, quoted identifiers) or ``comment``."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            end, kind = min(j + 1, n), "quoted"
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            end, kind = (n if j < 0 else j), "comment"
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            end, kind = (n if j < 0 else j + 2), "comment"
        else:
            end, kind = i + 1, "code"
        for k in range(i, end):
            yield k, sql[k], kind
        i = end


def _strip_comments(sql: str) -> str:
    out: list[str] = []
    in_comment = False
    for _i, ch, kind in _scan(sql):
        if kind == "comment":
            if not in_comment:
                out.append(" ")  # a comment separates tokens
            in_comment = True
            continue
        in_comment = False
        out.append(ch)
    return "".join(out)


def _split_top(sql: str, sep: str) -> list[str]:
    """Split at ``sep`` outside literals and parentheses; parts stripped, empty dropped."""
    parts, depth, start = [], 0, 0
    for i, ch, kind in _scan(sql):
        if kind != "code":
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(sql[start:i])
            start = i + 1
    parts.append(sql[start:])
    return [p.strip() for p in parts if p.strip()]


def split_statements(sql: str) -> list[str]:
    """The statements of a SQL script: comments removed, split at top-level ``;``."""
    return _split_top(_strip_comments(sql), ";")


def _matching_paren(sql: str, open_at: int) -> int:
    depth = 0
    for i, ch, kind in _scan(sql):
        if i < open_at or kind != "code":
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ClusterSchemaError(f"unbalanced parentheses in: {sql[:60]!r}")


def _tidy(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


# ---------------------------------------------------------------------- translation


def _table_name(qualified: str, database: str) -> str:
    if "." in qualified:
        db, name = qualified.split(".", 1)
        if db != database:
            raise ClusterSchemaError(
                f"table {qualified} names a database other than {database!r}: migrations "
                "use unqualified table names")
        return name
    return qualified


def _drop_codec(column: str) -> str:
    """A Distributed table stores nothing: a column's CODEC(...) does not belong there."""
    m = re.search(r"\bCODEC\s*\(", column, re.I)
    if not m:
        return column
    end = _matching_paren(column, m.end() - 1)
    return (column[:m.start()] + column[end + 1:]).rstrip()


def _create(stmt: str, m: re.Match[str], cluster: str, db: str,
            keys: Mapping[str, str]) -> list[str]:
    name = _table_name(m.group("name"), db)
    close = _matching_paren(stmt, m.end() - 1)
    elements = _split_top(stmt[m.end():close], ",")
    rest = stmt[close + 1:]
    em = _ENGINE.match(rest)
    if not em:
        raise ClusterSchemaError(f"CREATE TABLE {name}: no ENGINE clause")
    engine = em.group("engine")
    tail_at = em.end()
    args = ""
    if rest[tail_at:tail_at + 1] == "(":
        args_end = _matching_paren(rest, tail_at)
        args = rest[tail_at + 1:args_end].strip()
        tail_at = args_end + 1
    tail = _tidy(rest[tail_at:])
    if not engine.endswith("MergeTree") or engine.startswith("Replicated"):
        raise ClusterSchemaError(
            f"CREATE TABLE {name}: engine {engine} has no Replicated variant to use")
    ine = "IF NOT EXISTS " if m.group("ine") else ""
    distributed = name not in NOT_DISTRIBUTED
    local = f"{name}_local" if distributed else name
    shard = "{shard}" if distributed else "all"
    engine_args = [f"'/clickhouse/tables/{shard}/{db}/{local}'", "'{replica}'"]
    if args:
        engine_args.append(args)
    body = ",\n".join(f"    {e}" for e in elements)
    out = [
        f"CREATE TABLE {ine}{db}.{local} ON CLUSTER {cluster}\n(\n{body}\n)\n"
        f"ENGINE = Replicated{engine}({', '.join(engine_args)})" + (f"\n{tail}" if tail else "")
    ]
    if distributed:
        if name not in keys:
            raise ClusterSchemaError(
                f"table {name} has no sharding key: add one to "
                "archwatch.cluster_schema.SHARDING_KEYS (a function of columns that never "
                "change for a row's identity)")
        columns = ",\n".join(f"    {_drop_codec(e)}" for e in elements
                             if not _NOT_COLUMN.match(e))
        out.append(
            f"CREATE TABLE {ine}{db}.{name} ON CLUSTER {cluster}\n(\n{columns}\n)\n"
            f"ENGINE = Distributed({cluster}, {db}, {local}, {keys[name]})")
    return out


# A source's sharding key that a view's whole WHERE reduces to another key: an anomaly
# with a case lives on its case's shard (0018's case_doc_anomaly_mv keeps only those).
KEY_UNDER_FILTER: dict[tuple[str, str], str] = {
    ("cityHash64(if(case_no = '', receiver_id, case_no))", "case_no != ''"):
        "cityHash64(case_no)",
}


def _create_mv(m: re.Match[str], cluster: str, db: str, keys: Mapping[str, str]) -> str:
    """A materialized view fires on the inserts into its source's ``_local`` table on each
    node and writes to the target's ``_local`` table there: right only when the two are
    sharded alike (each target row belongs where its source row lives), so that is
    required. One source table, no JOIN (a view over a JOIN fires on its left table
    only: join in the dataflow instead)."""
    name, target = (_table_name(m.group(g), db) for g in ("name", "target"))
    select = m.group("select")
    sources = [_table_name(f.group(2), db) for f in _FROM_TABLE.finditer(select)]
    if len(sources) != 1 or _JOIN.search(select):
        raise ClusterSchemaError(f"materialized view {name}: one source table, no JOIN")
    source = sources[0]
    if source in NOT_DISTRIBUTED or target in NOT_DISTRIBUTED:
        raise ClusterSchemaError(f"materialized view {name}: its tables must be distributed")
    source_key = keys.get(source)
    for (key, where), same in KEY_UNDER_FILTER.items():
        if key == source_key and re.search(rf"\bWHERE\s+{re.escape(where)}\s*$", select):
            source_key = same
    if source_key is None or source_key != keys.get(target):
        raise ClusterSchemaError(
            f"materialized view {name}: {target} must be sharded like {source} "
            "(archwatch.cluster_schema.SHARDING_KEYS): the view writes on the shard it reads")
    body = _FROM_TABLE.sub(lambda f: f"{f.group(1)}{db}.{source}_local", _tidy(select))
    ine = "IF NOT EXISTS " if m.group("ine") else ""
    return (f"CREATE MATERIALIZED VIEW {ine}{db}.{name} ON CLUSTER {cluster}"
            f" TO {db}.{target}_local AS\n{body}")


def _alter(stmt: str, m: re.Match[str], cluster: str, db: str) -> list[str]:
    name = _table_name(m.group("name"), db)
    cmds_text = m.group("cmds")
    if _ON_CLUSTER.match(cmds_text):
        raise ClusterSchemaError(f"ALTER TABLE {name}: already ON CLUSTER")
    cmds = [_tidy(c).replace("\n", " ") for c in _split_top(cmds_text, ",")]

    def alter(table: str, commands: list[str]) -> str:
        return f"ALTER TABLE {db}.{table} ON CLUSTER {cluster}\n" + ",\n".join(
            f"    {c}" for c in commands)

    if name in NOT_DISTRIBUTED:
        return [alter(name, cmds)]
    column_cmds = [c for c in cmds if _COLUMN_CMD.match(c)]
    out = [alter(f"{name}_local", cmds)]
    if column_cmds:
        dist = alter(name, column_cmds)
        # a column leaves the Distributed table first, and arrives there last
        if any(c.upper().startswith("DROP") for c in column_cmds):
            out.insert(0, dist)
        else:
            out.append(dist)
    return out


def _insert_select(stmt: str, m: re.Match[str], db: str) -> str:
    """A backfill (``INSERT INTO t SELECT ... FROM s ...``) runs once, from one node,
    through the Distributed tables: the insert is routed by ``t``'s sharding key, and
    ``FINAL`` applies per shard, which is right because every version of a row lives on
    one shard. Only the two table names are qualified with the database. In the
    foreground: a Distributed insert otherwise queues its rows on this node and sends
    them later, to whatever table then has the target's ``_local`` name (after 0013's
    swap, the old layout, about to be dropped)."""
    target = _table_name(m.group("name"), db)
    body = _FROM_TABLE.sub(lambda f: f"{f.group(1)}{db}.{_table_name(f.group(2), db)}",
                           stmt[m.end():])
    return f"INSERT INTO {db}.{target} SETTINGS distributed_foreground_insert = 1{body}"


def _exchange(m: re.Match[str], cluster: str, db: str) -> str:
    """A swap of two tables (a new layout taking an old one's place) swaps what they
    hold: on every node, the ``_local`` tables. Each Distributed table reads its
    ``_local`` table by name, so it then reads the other's rows; the two must be both
    distributed or both not. The replicas' Keeper paths travel with the tables: the
    swapped-in ``anomaly_local`` keeps ``…/anomaly_next_local``'s (never reuse that name)."""
    a, b = (_table_name(m.group(g), db) for g in ("a", "b"))
    if (a in NOT_DISTRIBUTED) != (b in NOT_DISTRIBUTED):
        raise ClusterSchemaError(f"EXCHANGE TABLES {a} AND {b}: one is not distributed")
    suffix = "" if a in NOT_DISTRIBUTED else "_local"
    return f"EXCHANGE TABLES {db}.{a}{suffix} AND {db}.{b}{suffix} ON CLUSTER {cluster}"


def _drop(m: re.Match[str], cluster: str, db: str) -> list[str]:
    name = _table_name(m.group("name"), db)
    ie = "IF EXISTS " if m.group("ie") else ""
    if name in NOT_DISTRIBUTED:
        return [f"DROP TABLE {ie}{db}.{name} ON CLUSTER {cluster} SYNC"]
    return [f"DROP TABLE {ie}{db}.{name} ON CLUSTER {cluster}",
            f"DROP TABLE {ie}{db}.{name}_local ON CLUSTER {cluster} SYNC"]


def cluster_statements(migration_sql: str, cluster: str = "archwatch",
                       database: str = "default",
                       sharding_keys: Mapping[str, str] | None = None) -> list[str]:
    """The cluster statements for one migration's SQL, without trailing ``;``."""
    for what, ident in (("cluster", cluster), ("database", database)):
        if not _IDENT.match(ident):
            raise ClusterSchemaError(f"{what} name {ident!r} is not a plain identifier")
    keys = {**SHARDING_KEYS, **(sharding_keys or {})}
    out: list[str] = []
    for stmt in split_statements(migration_sql):
        if m := _CREATE.match(stmt):
            out.extend(_create(stmt, m, cluster, database, keys))
        elif m := _CREATE_MV.match(stmt):
            out.append(_create_mv(m, cluster, database, keys))
        elif m := _ALTER.match(stmt):
            out.extend(_alter(stmt, m, cluster, database))
        elif m := _DROP.match(stmt):
            out.extend(_drop(m, cluster, database))
        elif m := _DROP_VIEW.match(stmt):  # a view lives on every node under its name
            ie = "IF EXISTS " if m.group("ie") else ""
            out.append(f"DROP VIEW {ie}{database}.{_table_name(m.group('name'), database)}"
                       f" ON CLUSTER {cluster} SYNC")
        elif m := _INSERT_SELECT.match(stmt):
            out.append(_insert_select(stmt, m, database))
        elif m := _EXCHANGE.match(stmt):
            out.append(_exchange(m, cluster, database))
        else:
            raise ClusterSchemaError(
                "no cluster translation for this statement (extend archwatch/"
                f"cluster_schema.py): {' '.join(stmt.split())[:80]!r}")
    return out


def cluster_sql(migration_sql: str, cluster: str = "archwatch", database: str = "default",
                sharding_keys: Mapping[str, str] | None = None) -> str:
    """Rewrite one single-node migration into its ClickHouse cluster form (a script of
    ``;``-terminated statements); see the module docstring. Pure and deterministic."""
    return "".join(f"{s};\n\n" for s in cluster_statements(
        migration_sql, cluster, database, sharding_keys))


def schema_migrations_sql(cluster: str = "archwatch", database: str = "default") -> str:
    """The cluster form of ``schema_migrations`` (one statement, no ``;``)."""
    for ident in (cluster, database):
        if not _IDENT.match(ident):
            raise ClusterSchemaError(f"{ident!r} is not a plain identifier")
    return _SCHEMA_MIGRATIONS.format(db=database, cluster=cluster)


def record_sql(mig: Migration, database: str = "default") -> str:
    """The row ``archwatch.migrate`` would write for ``mig`` (one statement, no ``;``)."""
    return (f"INSERT INTO {database}.schema_migrations (version, name, checksum) "
            f"VALUES ({mig.version}, '{mig.name}', '{mig.checksum}')")


def cluster_schema_sql(migrations: Sequence[Migration], cluster: str = "archwatch",
                       database: str = "default", record: bool = True) -> str:
    """The whole cluster schema as one script for ``clickhouse-client --multiquery``."""
    parts = [
        f"-- archwatch cluster schema: cluster {cluster}, database {database}.\n"
        "-- Generated by `python -m archwatch.cluster_schema` from clickhouse/migrations;\n"
        "-- regenerate it, do not edit it. See docs/cluster.md.\n\n",
        "-- schema_migrations: one replicated copy for the whole cluster, not sharded.\n",
        schema_migrations_sql(cluster, database) + ";\n\n",
    ]
    for mig in migrations:
        parts.append(f"-- {mig.name} (sha256 {mig.checksum})\n")
        parts.append(cluster_sql(mig.sql, cluster, database))
        if record:
            parts.append(record_sql(mig, database) + ";\n\n")
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m archwatch.cluster_schema",
        description="Print the ClickHouse cluster variant of archwatch's migrations "
                    "(ReplicatedReplacingMergeTree *_local tables ON CLUSTER + Distributed).")
    p.add_argument("--cluster", default="archwatch",
                   help="cluster name in the servers' remote_servers (default archwatch)")
    p.add_argument("--database", default="default", help="database (default: default)")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="omit the INSERTs that record each migration in schema_migrations")
    p.add_argument("--since", type=int, default=0, metavar="VERSION",
                   help="only migrations numbered VERSION or later (an upgrade)")
    args = p.parse_args(argv)
    migrations = [m for m in load_migrations() if m.version >= args.since]
    try:
        sql = cluster_schema_sql(migrations, args.cluster, args.database, args.record)
    except ClusterSchemaError as exc:
        print(f"archwatch.cluster_schema: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(sql)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
