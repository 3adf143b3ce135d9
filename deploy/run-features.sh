#!/bin/sh
# Container entry point of the features dataflow (one process).
#
# Mirrors engine/runtime/jobs.py for a single process: when
# RTML_PIPELINE_RECOVERY_DIR is set (non-empty), Bytewax recovery partitions are
# created once under <dir>/features and the flow runs with -r/-s/-b; otherwise it
# runs without recovery (and re-reads the events topic from the beginning on
# every start). Everything else is configured with RTML_* variables.
set -eu

flow="dataflows.features:flow_from_env()"
recovery_root="${RTML_PIPELINE_RECOVERY_DIR:-}"
snapshot_s="${RTML_PIPELINE_SNAPSHOT_INTERVAL_S:-5}"

if [ -z "$recovery_root" ]; then
    exec python -m bytewax.run "$flow"
fi

recovery="$recovery_root/features"
mkdir -p "$recovery"
set -- "$recovery"/part-*.sqlite3
if [ ! -e "$1" ]; then
    echo "rtml: initialising Bytewax recovery partitions in $recovery"
    python -m bytewax.recovery "$recovery" 1
fi
exec python -m bytewax.run "$flow" -r "$recovery" -s "$snapshot_s" -b 0
