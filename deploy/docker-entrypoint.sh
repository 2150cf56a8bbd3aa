#!/usr/bin/env bash
# The llmdoctor image's entrypoint (installed as /usr/local/bin/llmdoctor-entrypoint).
# `docker run IMAGE [ARGS]` runs:
#   (nothing) | serve [ARGS]     llmdoctor serve ARGS (every setting is also an LLMDOCTOR_* env var)
#   --flag ...                   llmdoctor serve --flag ...
#   batch|train|eval|data|recipe|merge [ARGS]
#                                llmdoctor SUBCOMMAND ARGS
#   anything else                that command as is: bash, ray start ..., python ...
# LLMDOCTOR_WAIT_FOR_RAY=HOST:PORT makes `serve` and `batch` wait up to LLMDOCTOR_WAIT_TIMEOUT seconds
# (default 120) for the Ray head to accept connections, so containers may start in any order.
# LLMDOCTOR_BIN replaces the llmdoctor executable (tests/deploy/test_entrypoint.py uses a fake one).
set -euo pipefail

readonly llmdoctor_bin="${LLMDOCTOR_BIN:-llmdoctor}"
readonly script_name="llmdoctor-entrypoint"

usage() {
  cat <<EOF
usage: $script_name [serve|batch|train|eval|data|recipe|merge] [ARGS...]
       $script_name --FLAG ...        (llmdoctor serve --FLAG ...)
       $script_name COMMAND [ARGS...] (any other command, e.g. bash or ray start --head)
Settings come from flags or LLMDOCTOR_* env vars; \`$script_name serve --help\` lists them.
LLMDOCTOR_WAIT_FOR_RAY=HOST:PORT waits for a Ray head first (LLMDOCTOR_WAIT_TIMEOUT s, default 120).
EOF
}

fail() {
  echo "$script_name: $*" >&2
  exit 1
}

# Waits until HOST:PORT accepts a TCP connection; exits 1 after LLMDOCTOR_WAIT_TIMEOUT seconds.
wait_for_ray() {
  local address="${1#*://}"  # tolerate ray://HOST:PORT
  local timeout="${LLMDOCTOR_WAIT_TIMEOUT:-120}"
  local host="${address%:*}" port="${address##*:}"
  host="${host#[}"  # [::1]:6379
  host="${host%]}"
  [[ "$host" != "$address" && -n "$host" && "$port" =~ ^[0-9]+$ ]] ||
    fail "LLMDOCTOR_WAIT_FOR_RAY must be HOST:PORT, got '$1'"
  [[ "$timeout" =~ ^[0-9]+$ ]] || fail "LLMDOCTOR_WAIT_TIMEOUT must be whole seconds, got '$timeout'"

  local deadline=$((SECONDS + timeout))
  echo "$script_name: waiting up to ${timeout}s for Ray at $address" >&2
  # `timeout` bounds each try: a connect to a host that drops packets would otherwise hang for minutes.
  # shellcheck disable=SC2016  # $0 and $1 are the inner bash's arguments
  until timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "Ray at $address did not accept connections within ${timeout}s (LLMDOCTOR_WAIT_FOR_RAY)"
    sleep 1
  done
}

wait_for_ray_if_asked() {
  if [[ -n "${LLMDOCTOR_WAIT_FOR_RAY:-}" ]]; then
    wait_for_ray "$LLMDOCTOR_WAIT_FOR_RAY"
  fi
}

main() {
  (($#)) || set -- serve
  case "$1" in
    help | -h | --help)
      usage
      ;;
    serve | batch)
      wait_for_ray_if_asked
      exec "$llmdoctor_bin" "$@"
      ;;
    train | eval | data | recipe | merge)
      exec "$llmdoctor_bin" "$@"
      ;;
    -*)
      wait_for_ray_if_asked
      exec "$llmdoctor_bin" serve "$@"
      ;;
    *)
      exec "$@"
      ;;
  esac
}

main "$@"
