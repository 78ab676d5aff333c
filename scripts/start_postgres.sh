#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the storage tests (and for trying --storage by hand).
#
#   bash scripts/start_postgres.sh start DIR   # install if missing, initdb under DIR, start, create a user
#                                              # and a database with a password; prints the URL and
#                                              # writes it to DIR/url
#   bash scripts/start_postgres.sh stop DIR    # stop that server (only the one whose cluster is DIR/data)
#
# The server listens on 127.0.0.1 only, on a free port, with its Unix socket in DIR/sock; host logins
# need the password (scram-sha-256). Debian's `postgresql` package is installed with apt-get only when
# no initdb is found (apt-get update first). As root the cluster belongs to the `postgres` user
# (initdb refuses to run as root). Nothing outside DIR is touched; remove DIR after `stop`.
set -euo pipefail

cmd=${1:-}
DIR=${2:-}
if [ -z "$cmd" ] || [ -z "$DIR" ]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
  return 1
}

as_owner() {  # run a command as the cluster owner
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if [ "$cmd" = stop ]; then
  BIN=$(find_bin) || exit 0
  if [ -f "$DIR/data/postmaster.pid" ]; then
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  echo "[postgres] stopped (cluster $DIR/data)" >&2
  exit 0
fi
[ "$cmd" = start ] || { echo "unknown command $cmd (start|stop)" >&2; exit 2; }

if ! BIN=$(find_bin); then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[postgres] PostgreSQL is not installed and cannot be installed here (needs root and apt-get)" >&2
    exit 1
  fi
  echo "[postgres] installing the Debian 'postgresql' package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || true
  if ! apt-get install -y -qq --no-install-recommends postgresql >&2 </dev/null; then
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2 </dev/null
  fi
  BIN=$(find_bin)
fi

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
mkdir -p "$DIR/data" "$DIR/sock"
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$DIR" "$DIR/data" "$DIR/sock"
  chmod 755 "$DIR"
fi
chmod 700 "$DIR/data"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
USER_NAME=autoprune
DB=autoprune

# initdb as the owner; a password file keeps the superuser password off the command line
echo "$PASSWORD" > "$DIR/.pw"
[ "$(id -u)" = 0 ] && chown postgres "$DIR/.pw"
chmod 600 "$DIR/.pw"
as_owner "$BIN/initdb" -D "$DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  --pwfile="$DIR/.pw" -E UTF8 --locale=C >"$DIR/initdb.log" 2>&1 \
  || { cat "$DIR/initdb.log" >&2; exit 1; }
as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
  -o "-k $DIR/sock -p $PORT -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null \
  || { cat "$DIR/server.log" >&2; exit 1; }
as_owner "$BIN/psql" -q -v ON_ERROR_STOP=1 -h "$DIR/sock" -p "$PORT" -U postgres -d postgres \
  -c "CREATE USER $USER_NAME PASSWORD '$PASSWORD'" -c "CREATE DATABASE $DB OWNER $USER_NAME" >&2
rm -f "$DIR/.pw"

URL="postgresql://$USER_NAME:$PASSWORD@127.0.0.1:$PORT/$DB"
echo "$URL" > "$DIR/url"
chmod 644 "$DIR/url"
echo "[postgres] running on 127.0.0.1:$PORT (cluster $DIR/data, log $DIR/server.log); URL in $DIR/url" >&2
echo "$URL"
