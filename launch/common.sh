#!/usr/bin/env bash
# Shared helpers for the launch scripts (sourced, not run).
# DRY_RUN=1 (or --dry-run, which the scripts turn into DRY_RUN=1) prints every command that
# would touch a cloud or a cluster, shell-quoted, one per line prefixed "+ ", and runs none.

DRY_RUN="${DRY_RUN:-0}"

# run CMD ARGS...: execute, or print under DRY_RUN=1.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

die() {
  echo "error: $*" >&2
  exit 2
}
