#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft) on loopback for tests and the demo.
#   scripts/kafka.sh fetch   # once: jars from Maven Central into .kafka/lib (git-ignored)
#   scripts/kafka.sh start   # format storage on first start, start, wait until it listens
#   scripts/kafka.sh stop
#   scripts/kafka.sh status
# Env: KAFKA_PORT (default 19092), KAFKA_HOME (default <repo>/.kafka)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HOME_DIR="${KAFKA_HOME:-$ROOT/.kafka}"
LIB="$HOME_DIR/lib"
PORT="${KAFKA_PORT:-19092}"
CPORT=$((PORT + 1))
DATA="$HOME_DIR/data-$PORT"
CONF="$HOME_DIR/server-$PORT.properties"
PIDF="$HOME_DIR/kafka-$PORT.pid"
LOG="$HOME_DIR/kafka-$PORT.log"

fetch() {
  if [ -f "$LIB/.complete" ]; then return 0; fi
  mkdir -p "$LIB"
  echo "fetching Apache Kafka jars from Maven Central into $LIB ..." >&2
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIB" -DincludeScope=runtime >&2
  touch "$LIB/.complete"
}

write_conf() {
  mkdir -p "$DATA"
  cat > "$CONF" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
CONF
  cat > "$HOME_DIR/log4j2.properties" <<'L4J'
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = WARN
L4J
}

running() { [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start() {
  fetch
  if running; then echo "kafka already running on 127.0.0.1:$PORT" >&2; return 0; fi
  if listening; then
    echo "a broker already listens on 127.0.0.1:$PORT (started elsewhere); using it" >&2
    return 0
  fi
  write_conf
  local java_opts=(-Xms256m -Xmx768m -Dkafka.logs.dir="$HOME_DIR/logs-$PORT"
                   -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties")
  if [ ! -f "$DATA/meta.properties" ]; then
    java "${java_opts[@]}" -cp "$LIB/*" kafka.tools.StorageTool format --standalone \
      -t "$(java -cp "$LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      -c "$CONF" >/dev/null
  fi
  nohup java "${java_opts[@]}" -cp "$LIB/*" kafka.Kafka "$CONF" >"$LOG" 2>&1 &
  echo $! > "$PIDF"
  for _ in $(seq 1 120); do
    if listening; then echo "kafka listening on 127.0.0.1:$PORT" >&2; return 0; fi
    if ! running; then echo "kafka failed to start; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; fi
    sleep 0.5
  done
  echo "kafka did not listen within 60 s; see $LOG" >&2
  exit 1
}

stop() {
  if running; then
    kill "$(cat "$PIDF")"
    for _ in $(seq 1 60); do running || break; sleep 0.5; done
    running && kill -9 "$(cat "$PIDF")" || true
  fi
  rm -f "$PIDF"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if listening; then echo "running on 127.0.0.1:$PORT"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
