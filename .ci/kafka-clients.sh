#!/usr/bin/env bash
# Installs the Kafka clients that broker/tests/kafka_clients.rs drives
# against a real `fjord serve`: kcat (Debian) and, in a virtualenv,
# confluent-kafka (librdkafka) and kafka-python (PyPI). Idempotent: what is
# there already is kept. The venv's path is what the tests look for
# (FJORD_KAFKA_VENV, default .ci/kafka-venv).
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
