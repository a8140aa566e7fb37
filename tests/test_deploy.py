"""The production deployment (docker-compose.yml, deploy/), checked without Docker.

The compose file is validated against the Compose Specification's JSON schema (the copy
that check-jsonschema ships) and by structural checks of our own: services, volumes,
health checks, the KRaft quorum, the Bytewax process cluster, and every archwatch command
line against archwatch's real CLI parser. nginx.conf is parsed and checked against the
API's real routes; the ClickHouse XML is parsed, and chDB runs what it configures
(profile settings, grants, the BACKUP disk).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / "archwatch.env.example"
NGINX = DEPLOY / "nginx.conf"
USERS_XML = DEPLOY / "clickhouse" / "users.d" / "archwatch.xml"
CONFIG_XML = DEPLOY / "clickhouse" / "config.d" / "archwatch.xml"
CLUSTER_XML = DEPLOY / "clickhouse" / "cluster" / "archwatch-cluster.xml"
MACROS_XML = DEPLOY / "clickhouse" / "cluster" / "macros-ch-1-1.xml"
DOCKERFILE = DEPLOY / "Dockerfile"

KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
CH_WRITER_GRANTS = {"SELECT", "INSERT", "CREATE TABLE", "ALTER TABLE"}
CH_WRITES = {"INSERT", "ALTER", "CREATE", "DROP", "TRUNCATE", "OPTIMIZE", "ALL"}


# ------------------------------------------------------------------ helpers


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


_VAR = re.compile(r"\$(\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (${V}, ${V:-d}, ${V-d}, ${V:?e}, ${V?e}, $$)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        have = env.get(name)
        if op in (":-", "-"):
            return have if have or (op == "-" and have is not None) else arg
        if op in (":?", "?") and not have:
            raise KeyError(f"{name}: {arg}")
        return have or ""

    return _VAR.sub(sub, value)


def _variables(text: str) -> dict[str, str | None]:
    """Variables the compose file uses: name -> its op (None when bare)."""
    return {m.group("name"): m.group("op") for m in _VAR.finditer(text) if m.group("name")}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file as Docker would run it with the example .env."""
    return interpolate(raw, _env_example())


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def _flag(cmd: list[str], *names: str) -> str | None:
    for i, arg in enumerate(cmd):
        if arg in names and i + 1 < len(cmd):
            return cmd[i + 1]
    return None


def _archwatch_services(compose: dict[str, Any], sub: str) -> dict[str, list[str]]:
    return {name: _command(s) for name, s in compose["services"].items()
            if _command(s)[:2] == ["archwatch", sub]}


def _dataflow_processes(compose: dict[str, Any]) -> dict[str, list[str]]:
    return {n: c for n, c in _archwatch_services(compose, "run").items()
            if _flag(c, "--process-id", "-i") is not None}


# ------------------------------------------------------------------ compose: schema


def test_compose_matches_the_compose_specification(raw: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("check_jsonschema")
    from importlib import resources

    spec = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(spec.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    # the schema does bite: a misspelt key and a wrong type are errors
    bad = json.loads(json.dumps(raw))
    bad["services"]["api"]["healthchek"] = {}
    bad["services"]["nginx"]["ports"] = "80:80"
    assert len(list(validator.iter_errors(bad))) >= 2


# ------------------------------------------------------------------ compose: structure


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert svc.get("image") or svc.get("build"), name
        build = svc.get("build")
        if isinstance(build, dict):
            assert (ROOT / build.get("context", ".") / build["dockerfile"]).is_file(), name


def test_dependencies_exist_and_have_no_cycles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    graph: dict[str, set[str]] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, how in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert dep != name, f"{name} depends on itself"
            assert how.get("condition", "service_started") in conditions
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            if how.get("condition") == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is one-shot"
            # a service of the default set must not need one started only by a profile
            if not svc.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} -> {dep} (profile)"
        graph[name] = set(deps)
    done: set[str] = set()
    while graph.keys() - done:
        ready = {n for n in graph.keys() - done if graph[n] <= done}
        assert ready, f"dependency cycle among {sorted(graph.keys() - done)}"
        done |= ready


def test_volumes_are_declared_used_and_bind_sources_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind source {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused: {declared - used}"


def test_stateful_services_keep_state_on_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts = {name: {v.split(":")[0]: v.split(":")[1] for v in s.get("volumes", [])
                     if isinstance(v, str)} for name, s in services.items()}
    for node in KAFKA_NODES:
        log_dirs = services[node]["environment"]["KAFKA_LOG_DIRS"]
        assert log_dirs in mounts[node].values() and not any(
            src.startswith(".") for src, dst in mounts[node].items() if dst == log_dirs)
    assert mounts["clickhouse"].get("clickhouse-data") == "/var/lib/clickhouse"
    assert mounts["clickhouse"].get("clickhouse-backups") == "/backups"
    recovery = {}
    for name, cmd in _archwatch_services(compose, "run").items():
        recovery_dir = _flag(cmd, "--recovery-dir")
        assert recovery_dir, f"{name} runs without --recovery-dir"
        assert "--no-recovery" not in cmd
        [volume] = [src for src, dst in mounts[name].items() if dst == recovery_dir]
        recovery[name] = volume
    # every process sees every recovery partition (one shared volume), as does the init
    assert len(set(recovery.values())) == 1
    assert set(recovery.values()) <= set(mounts["recovery-init"])


def test_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in (*KAFKA_NODES, "clickhouse", "api", "nginx", *_dataflow_processes(compose)):
        hc = services[name].get("healthcheck")
        assert hc and hc.get("test"), f"{name} has no healthcheck"
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "start_period"):
            if key in hc:
                assert re.fullmatch(r"\d+(ms|s|m|h)", hc[key]), (name, key)
    # the API's check asks the API's own /healthz; the dataflow's its metrics port
    assert any("/healthz" in part for part in services["api"]["healthcheck"]["test"])
    for name, cmd in _dataflow_processes(compose).items():
        port = _flag(cmd, "--metrics-port")
        assert port and any(f":{port}/metrics" in p for p in services[name]["healthcheck"]["test"])


def test_ports_are_strings(raw: dict[str, Any]) -> None:
    for name, svc in raw["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str), f"{name}: port {port!r} must be quoted"
        for port in svc.get("expose", []):
            assert isinstance(port, str), f"{name}: expose {port!r} must be quoted"


def test_shared_settings_come_from_anchors(raw: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    services = raw["services"]
    assert "&archwatch-env" in text and "&kafka-env" in text and "&store-url" in text
    env = services["store-migrate"]["environment"]
    for name in ("dataflow-0", "dataflow-1", "distributor"):
        assert services[name]["environment"] is env, f"{name} does not use *archwatch-env"
    assert env.items() <= services["api"]["environment"].items()  # <<: *archwatch-env
    urls = {_flag(_command(s), "--url") for s in services.values()
            if _command(s)[:1] == ["archwatch"] and "--url" in _command(s)}
    assert urls == {env["ARCHWATCH_URL"]}


def test_env_example_covers_every_variable() -> None:
    used = _variables(COMPOSE.read_text())
    example = _env_example()
    required = {name for name, op in used.items() if op in (None, ":?", "?")}
    assert required <= set(example), f"not in the env example: {required - set(example)}"
    assert set(example) <= set(used), f"unused in compose: {set(example) - set(used)}"
    # and the example really interpolates the whole file
    interpolate(yaml.safe_load(COMPOSE.read_text()), example)
    with pytest.raises(KeyError, match="ARCHWATCH_CH_PASSWORD"):
        interpolate(yaml.safe_load(COMPOSE.read_text()), {})


# ------------------------------------------------------------------ Kafka (KRaft)


def test_kafka_is_a_three_node_kraft_quorum(compose: dict[str, Any]) -> None:
    services = compose["services"]
    envs = {n: services[n]["environment"] for n in KAFKA_NODES}
    for node, env in envs.items():
        assert services[node]["image"].startswith("apache/kafka:")
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
    ids = [str(env["KAFKA_NODE_ID"]) for env in envs.values()]
    assert len(set(ids)) == 3, f"node ids must differ: {ids}"
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    assert len(voters) == 1, "the nodes disagree on controller.quorum.voters"
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    parsed = dict(v.split("@") for v in voters.pop().split(","))
    assert set(parsed) == set(ids)
    for node, env in envs.items():
        host, port = parsed[str(env["KAFKA_NODE_ID"])].split(":")
        assert host == node
        listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
        assert listeners["CONTROLLER"] == f":{port}"
        advertised = dict(i.split("://") for i in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
        assert advertised["PLAINTEXT"] == f"{node}:9092"  # the internal listener
        assert "CONTROLLER" not in advertised
        protocols = dict(i.split(":") for i in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                         .split(","))
        assert set(listeners) <= set(protocols)
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) < int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"])
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) <= 3
    # each broker publishes its own external port
    published = [p.split(":")[0] for n in KAFKA_NODES for p in services[n]["ports"]]
    assert len(set(published)) == 3


def test_clients_bootstrap_from_every_broker(compose: dict[str, Any]) -> None:
    brokers = {f"{n}:9092" for n in KAFKA_NODES}
    for name, cmd in _archwatch_services(compose, "run").items():
        assert set(_flag(cmd, "--brokers").split(",")) == brokers, name
    assert set(compose["services"]["kafka-init"]["environment"]["BOOTSTRAP"].split(",")) == \
        brokers


def test_topics_are_the_ones_the_dataflow_reads(compose: dict[str, Any]) -> None:
    from archwatch.connectors.kafka import KafkaSettings

    script = "\n".join(compose["services"]["kafka-init"]["command"])
    created = set(re.search(r"for t in ([^;]+);", script).group(1).split())
    ks = KafkaSettings()
    assert created == {*ks.topics, ks.dlq_topic}
    assert "--replication-factor 3" in script


# ------------------------------------------------------------------ ClickHouse service


def test_clickhouse_service(compose: dict[str, Any]) -> None:
    ch = compose["services"]["clickhouse"]
    assert ch["image"].startswith("clickhouse/clickhouse-server:")
    targets = {v.split(":")[1]: v.split(":")[0] for v in ch["volumes"]}
    assert targets["/etc/clickhouse-server/users.d/archwatch.xml"] == \
        "./deploy/clickhouse/users.d/archwatch.xml"
    assert targets["/etc/clickhouse-server/config.d/archwatch.xml"] == \
        "./deploy/clickhouse/config.d/archwatch.xml"
    # every password the users file reads from the environment is passed in
    wanted = {e.get("from_env") for e in ET.parse(USERS_XML).iter() if e.get("from_env")}
    assert wanted and wanted <= set(ch["environment"])
    assert all(ch["environment"][v] for v in wanted)
    # the writer URL names the writer user and this server's HTTP port
    url = compose["services"]["api"]["environment"]["ARCHWATCH_URL"]
    m = re.fullmatch(r"http://(\w+):([^@]+)@clickhouse:8123/(\w+)", url)
    assert m and m.group(1) == "archwatch"
    assert m.group(2) == ch["environment"]["ARCHWATCH_CH_PASSWORD"]


# ------------------------------------------------------------------ dataflow cluster, API


def test_dataflow_is_a_bytewax_process_cluster(compose: dict[str, Any]) -> None:
    procs = _dataflow_processes(compose)
    assert len(procs) >= 2
    ids = sorted(int(_flag(c, "--process-id", "-i")) for c in procs.values())
    assert ids == list(range(len(procs)))
    addresses = {_flag(c, "--addresses", "-a") for c in procs.values()}
    assert len(addresses) == 1, "every process must be given the same address list"
    addrs = addresses.pop().split(",")
    assert len(addrs) == len(procs)
    for name, cmd in procs.items():
        host, port = addrs[int(_flag(cmd, "--process-id", "-i"))].split(":")
        assert host in (name, compose["services"][name].get("hostname")), (name, host)
        assert port.isdigit()
        assert int(_flag(cmd, "-w", "--workers")) >= 1
    workers = sum(int(_flag(c, "-w", "--workers")) for c in procs.values())
    parts = int(compose["services"]["recovery-init"]["environment"]["PARTS"])
    assert parts >= workers, "recovery partitions: at least the cluster's worker count"
    # every process waits for its topics, the schema and the recovery partitions
    for name in procs:
        deps = compose["services"][name]["depends_on"]
        assert {"kafka-init", "store-migrate", "recovery-init"} <= set(deps)


def test_command_lines_match_the_cli(compose: dict[str, Any]) -> None:
    from archwatch.cli import build_parser

    parser = build_parser()
    commands = {n: c for n, c in ((n, _command(s)) for n, s in compose["services"].items())
                if c[:1] == ["archwatch"]}
    assert {"api", "dataflow-0", "dataflow-1", "distributor"} <= set(commands)
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    for name, cmd in commands.items():
        assert cmd[1] in subcommands, f"{name}: unknown command {cmd[1]}"
        args, unknown = parser.parse_known_args(cmd[1:])
        assert not unknown, f"{name}: unknown arguments {unknown}"
        assert args.url and not args.db, f"{name} must use the ClickHouse server"
    serve = parser.parse_known_args(commands["api"][1:])[0]
    assert serve.host == "0.0.0.0"
    assert compose["services"]["api"]["expose"] == [str(serve.port)]
    assert "profiles" not in compose["services"]["distributor"]  # it exists now


# ------------------------------------------------------------------ nginx


def _nginx_tree(text: str) -> list[tuple[list[str], list[Any] | None]]:
    """nginx.conf as nested (words, block) statements; block is None for `x y;`."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{};]|[^\s{};"\']+',
                        re.sub(r"#[^\n]*", "", text))
    pos = 0

    def block() -> list[tuple[list[str], list[Any] | None]]:
        nonlocal pos
        out: list[tuple[list[str], list[Any] | None]] = []
        words: list[str] = []
        while pos < len(tokens):
            tok = tokens[pos]
            pos += 1
            if tok == ";":
                assert words, "empty statement"
                out.append((words, None))
                words = []
            elif tok == "{":
                out.append((words, block()))
                words = []
            elif tok == "}":
                assert not words, f"missing ';' after {words}"
                return out
            else:
                words.append(tok)
        assert not words, f"missing ';' after {words}"
        return out

    tree = block()
    assert pos == len(tokens), "unbalanced braces"
    return tree


def _find(tree: list[Any], name: str) -> list[tuple[list[str], Any]]:
    return [(w, b) for w, b in tree if w and w[0] == name]


def test_nginx_proxies_the_api_and_serves_the_console(compose: dict[str, Any]) -> None:
    tree = _nginx_tree(NGINX.read_text())
    [(_, http)] = _find(tree, "http")
    [(upstream, ups)] = _find(http, "upstream")
    api_port = compose["services"]["api"]["expose"][0]
    assert [w for w, _ in _find(ups, "server")] == [["server", f"api:{api_port}"]]
    [(_, server)] = _find(http, "server")
    proxy_to = f"http://{upstream[1]}"
    locations: dict[tuple[str, ...], list[Any]] = {tuple(w[1:]): b for w, b in
                                                   _find(server, "location")}

    def proxied(path: str) -> bool:
        """Does nginx send ``path`` to the API? (exact match first, then longest prefix)"""
        for key, body in locations.items():
            if key == ("=", path):
                return any(w == ["proxy_pass", proxy_to] for w, _ in _find(body, "proxy_pass"))
        prefixes = [k for k in locations if len(k) == 1 and path.startswith(k[0])]
        best = max(prefixes, key=lambda k: len(k[0]))
        return any(w == ["proxy_pass", proxy_to] for w, _ in _find(locations[best], "proxy_pass"))

    for path in ("/api/v1/stats", "/gdtjapi/charts/taskArchiveList", "/docs",
                 "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/healthz"):
        assert proxied(path), path
    assert not proxied("/index.html") and not proxied("/")
    # every route the API really has, except its ClickHouse-compatible "/" and "/ping"
    # for the embedded store (with a server store auditors use ClickHouse itself)
    from archwatch.api.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the OpenAPI generator's own remarks
        paths = set(create_app().openapi()["paths"]) | {"/docs", "/redoc", "/openapi.json"}
    for path in sorted(paths - {"/", "/ping"}):
        assert proxied(path.replace("{", "x").replace("}", "x")), f"nginx does not proxy {path}"
    # the console: the directory compose mounts is the root nginx serves
    [(root, _)] = _find(server, "root")
    mounts = [v for v in compose["services"]["nginx"]["volumes"]
              if v.split(":")[1] == root[1]]
    assert len(mounts) == 1 and (ROOT / mounts[0].split(":")[0] / "index.html").is_file()
    assert any(v.split(":")[1] == "/etc/nginx/nginx.conf" for v in
               compose["services"]["nginx"]["volumes"])
    assert ["try_files", "$uri", "$uri/", "/index.html"] in [w for w, _ in
                                                            _find(locations[("/",)], "try_files")]


# ------------------------------------------------------------------ ClickHouse XML


def _xml(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "clickhouse"
    return root


def test_users_define_a_writer_and_a_read_only_auditor() -> None:
    root = _xml(USERS_XML)
    auditor = root.find("profiles/auditor")
    writer = root.find("profiles/archwatch")
    assert auditor is not None and writer is not None
    assert auditor.findtext("readonly") in ("1", "2")
    const = auditor.find("constraints/readonly")
    assert const is not None and (const.find("const") is not None
                                  or const.find("readonly") is not None)
    assert writer.findtext("readonly", "0") == "0"
    users = root.find("users")
    assert users.findtext("auditor/profile") == "auditor"
    assert users.findtext("archwatch/profile") == "archwatch"
    for user in ("auditor", "archwatch"):
        pw = users.find(f"{user}/password")
        assert pw is not None and pw.get("from_env") and not (pw.text or "").strip(), user
        assert users.find(f"{user}/networks/ip") is not None
    grants = {u: [q.text.strip() for q in users.findall(f"{u}/grants/query")]
              for u in ("auditor", "archwatch")}
    for q in grants["auditor"]:
        privileges = re.match(r"GRANT (.+) ON ", q).group(1).upper()
        assert not any(w in privileges for w in CH_WRITES), q
    writer_privileges = {p.strip() for q in grants["archwatch"]
                         for p in re.match(r"GRANT (.+) ON ", q).group(1).split(",")}
    assert writer_privileges >= CH_WRITER_GRANTS
    # the password-less built-in user stays on loopback
    default_nets = [ip.text for ip in users.findall("default/networks/ip")]
    assert default_nets and set(default_nets) <= {"::1", "127.0.0.1"}


def test_cluster_example_matches_the_cluster_schema() -> None:
    from archwatch.cluster_schema import cluster_schema_sql
    from archwatch.migrate import load_migrations

    root = _xml(CLUSTER_XML)
    clusters = root.find("remote_servers")
    assert clusters is not None and clusters.find("archwatch") is not None
    assert "ON CLUSTER archwatch" in cluster_schema_sql(load_migrations())
    shards = clusters.findall("archwatch/shard")
    assert len(shards) >= 2
    for shard in shards:
        # replicated tables replicate themselves: Distributed writes one replica
        assert shard.findtext("internal_replication") == "true"
        assert len(shard.findall("replica")) >= 2
    assert len(root.findall("zookeeper/node")) % 2 == 1
    macros = _xml(MACROS_XML).find("macros")
    assert macros.findtext("shard") and macros.findtext("replica")


@pytest.fixture(scope="module")
def chdb_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """chDB with deploy/clickhouse/config.d/archwatch.xml, its paths moved to a temp dir."""
    chdb = pytest.importorskip("chdb")
    tmp = tmp_path_factory.mktemp("deploy-chdb")
    config = ET.parse(CONFIG_XML)
    backups = tmp / "backups"
    backups.mkdir()
    for el in config.iter():
        if el.tag in ("path", "allowed_path") and (el.text or "").startswith("/backups"):
            el.text = f"{backups}/"
    config.write(tmp / "config.xml")
    conn = chdb.connect(f"file:{tmp / 'db'}?config-file={tmp / 'config.xml'}")
    yield conn
    conn.close()


def test_profile_settings_and_grants_are_valid_clickhouse(chdb_session: Any) -> None:
    root = _xml(USERS_XML)
    names = {el.tag for profile in root.find("profiles")
             for el in profile if el.tag != "constraints"}
    names |= {el.tag for c in root.iter("constraints") for el in c}
    known = set(chdb_session.query(
        "SELECT name FROM system.settings WHERE name IN ({})".format(
            ", ".join(f"'{n}'" for n in sorted(names))), "TSVRaw").data().split())
    assert names <= known, f"unknown settings in profiles: {names - known}"
    for query in root.iter("query"):
        chdb_session.query(f"SELECT formatQuery('{query.text.strip()} TO someone')", "TSVRaw")


def test_backup_disk_backs_up_and_restores(chdb_session: Any) -> None:
    """The BACKUP/RESTORE commands of docs/operations.md, on the configured disk."""
    q = chdb_session.query
    q("CREATE DATABASE IF NOT EXISTS bk")
    q("CREATE TABLE bk.case_state (case_no String, version UInt64, is_deleted UInt8) "
      "ENGINE = ReplacingMergeTree(version, is_deleted) ORDER BY case_no")
    q("INSERT INTO bk.case_state VALUES ('A', 1, 0), ('A', 2, 0), ('B', 1, 0), ('B', 2, 1)")
    assert "BACKUP_CREATED" in q("BACKUP DATABASE bk TO Disk('backups', 'bk-1')",
                                 "TSVRaw").data()
    q("DROP TABLE bk.case_state")
    assert "RESTORED" in q("RESTORE DATABASE bk FROM Disk('backups', 'bk-1')", "TSVRaw").data()
    assert q("SELECT case_no, version FROM bk.case_state FINAL ORDER BY case_no",
             "CSV").data() == '"A",2\n'
    size = q("SELECT table, sum(bytes_on_disk) FROM system.parts WHERE active AND "
             "database = 'bk' GROUP BY table", "CSV").data()
    assert size.startswith('"case_state",')


# ------------------------------------------------------------------ image


def test_dockerfile_copies_every_package() -> None:
    text = DOCKERFILE.read_text()
    copies = [line.split()[1:-1] for line in text.splitlines()
              if line.startswith("COPY ") and "--from" not in line]
    sources = {s for srcs in copies for s in srcs}
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    top = {d.split("/")[0] for d in package_dirs}
    assert top <= sources, f"not copied into the image: {top - sources}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= sources
    # the Dockerfile's own ignore file lets each of them into the build context
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore
    for src in sources:
        assert f"!{src}" in ignore or f"!{src}/" in ignore, src
    # the Python the project supports
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert ">=3.11" in pyproject["project"]["requires-python"]
