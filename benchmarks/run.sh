#!/usr/bin/env bash
# Reproduce the figures of benchmarks/README.md.
#
#   benchmarks/run.sh                      # the configured database (PGQUEUE_DSN, libpq
#                                          # environment, else the embedded PostgreSQL)
#   benchmarks/run.sh "host=127.0.0.1 dbname=pgq_bench user=postgres"
#
# Use a scratch database: the bench deletes the rows of its own queue (`bench`) before
# and after each scenario, and runs VACUUM ANALYZE on pgqueue.jobs.
# JSON reports are written to $OUT (default benchmarks/results/).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
pgqueue="${PGQUEUE:-$root/.venv/bin/pgqueue}"
out="${OUT:-$here/results}"
mkdir -p "$out"

dsn_args=()
if [[ $# -ge 1 && -n "$1" ]]; then
    dsn_args=(--dsn "$1")
fi
stamp="$(date +%Y%m%d-%H%M%S)"
concurrency="${CONCURRENCY:-50}"

run() {  # name, then bench options
    local name="$1"; shift
    echo "== $name: pgqueue bench $*"
    "$pgqueue" "${dsn_args[@]}" bench "$@" --json-out "$out/$stamp-$name.json"
}

# 1. the four scenarios of the issue's floors (10,000 jobs, 500 latency samples)
run all --scenario all --jobs 10000 --concurrency "$concurrency" --samples 500
# 2. the same drain at the worker's default concurrency (10)
run drain-c10 --scenario drain --jobs 20000 --concurrency 10
# 3. a 100,000-job drain: throughput and the worker's resident memory, start vs peak
run drain-100k --scenario drain --jobs 100000 --concurrency "$concurrency"
# 4. claim round trip on an empty table vs with 1,000,000 finished rows
run claim-1m --scenario claim --finished-rows 1000000 --samples 500
echo "JSON reports in $out/$stamp-*.json"
