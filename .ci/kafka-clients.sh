#!/usr/bin/env bash
# Installs the Kafka clients that broker/tests/kafka_clients.rs drives
# against a real `fjord serve`: kcat (Debian) and, in a virtualenv,
# confluent-kafka (librdkafka) and kafka-python (PyPI), and kafkajs (npm,
# into .ci/kafkajs; skipped with a message when node or npm is missing).
# Idempotent: what is there already is kept. The paths are what the tests
# look for (FJORD_KAFKA_VENV, default .ci/kafka-venv; FJORD_KAFKAJS, default
# .ci/kafkajs).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FJORD_KAFKA_VENV:-.ci/kafka-venv}"
if ! command -v kcat >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq kcat
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-venv
    python3 -m venv "$venv"
  fi
fi
if ! "$venv/bin/python" -c 'import confluent_kafka, kafka' 2>/dev/null; then
  "$venv/bin/pip" install -q confluent-kafka kafka-python
fi
"$venv/bin/python" -c 'import confluent_kafka, kafka; print("kafka clients: confluent-kafka", confluent_kafka.version()[0], "librdkafka", confluent_kafka.libversion()[0], "kafka-python", kafka.__version__)'
kcat -V | head -1
kafkajs="${FJORD_KAFKAJS:-.ci/kafkajs}"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "kafkajs: skipped, node/npm missing (apt-get install -y nodejs npm)"
elif [ ! -f "$kafkajs/node_modules/kafkajs/package.json" ]; then
  mkdir -p "$kafkajs"
  npm install --silent --no-audit --no-fund --prefix "$kafkajs" kafkajs@2
fi
if [ -f "$kafkajs/node_modules/kafkajs/package.json" ]; then
  node -e 'console.log("kafkajs", require(process.argv[1] + "/node_modules/kafkajs/package.json").version)' "$(cd "$kafkajs" && pwd)"
fi
