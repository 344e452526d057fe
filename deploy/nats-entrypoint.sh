#!/bin/sh
# The nats service's entrypoint (compose.yaml): runs nats-server with the role passwords
# FG_ADMIN_PASSWORD and FG_BACKEND_PASSWORD made safe for its config (Bridge Nodes log
# in with their own NKeys and have no password).
#
# The included users (auth/authorization.conf) refer to them as $FG_<ROLE>_PASSWORD, and
# nats-server reads the value of such a reference as config text: 123456 becomes a number,
# true a boolean, "pa ss" a syntax error. So each one is handed on as a double-quoted config string in which every
# byte is a \xHH escape; nats-server reads that back as exactly the original string,
# whatever it holds (quotes, backslashes, '#', '$', spaces, non-ASCII). POSIX sh and od
# only (busybox in the Alpine image). Arguments go to nats-server unchanged.
set -eu

quote() {
  printf '"%s"' "$(printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n' | sed 's/../\\x&/g')"
}

for name in FG_ADMIN_PASSWORD FG_BACKEND_PASSWORD; do
  eval "value=\${$name-}"
  if [ -z "$value" ]; then
    echo "nats-entrypoint: $name is not set" >&2
    exit 1
  fi
  export "$name=$(quote "$value")"
done
unset value
exec nats-server "$@"
