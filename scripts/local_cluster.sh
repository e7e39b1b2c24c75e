#!/usr/bin/env bash
# A one-node SLURM cluster with accounting and a PostgreSQL server on this machine, to try lpreg's cluster journey
# (hydra/launcher=submitit_slurm, sweep.storage=postgresql://...) without a cluster. Debian-like system, as root.
#
#   scripts/local_cluster.sh install   # apt-get the packages that are missing (munge, slurm 22.05, slurmdbd,
#                                      # mariadb, postgresql); services are not started by the packages
#   scripts/local_cluster.sh start     # install if needed, then start munged, mariadbd, slurmdbd, slurmctld,
#                                      # slurmd and postgres (each only if not already running); idempotent
#   scripts/local_cluster.sh status    # which daemons run (by their PID files), the node state
#   scripts/local_cluster.sh env       # `export` lines for a shell: eval "$(scripts/local_cluster.sh env)"
#   scripts/local_cluster.sh stop      # stop the daemons this script started, by PID, in reverse order
#
# Everything (config, state, spool, logs, PID files, databases) lives under one folder, $LPREG_CLUSTER_DIR
# (default /tmp/lpreg-cluster); delete it after `stop` to start from nothing. Ports are $LPREG_CLUSTER_PORT_BASE
# (default 16810) + 7 (slurmctld), + 8 (slurmd), + 9 (slurmdbd), + 10 (mariadb), + 11 (postgres), all on
# 127.0.0.1. Choices that make SLURM run in a container without systemd or cgroups (measured on Debian 12):
# SlurmUser=root, proctrack/linuxproc, task/none, select/cons_tres with CR_Core, RealMemory = 90% of the total
# memory (a higher value drains the node). PostgreSQL: user and password `lpreg`, database `lpreg`; it is a local
# test server, not hardened. Exit codes: 0 ok, 1 a daemon did not come up (its log is printed), 2 usage,
# 3 packages missing and this machine cannot install them (not root, or no apt-get).
set -euo pipefail

DIR="${LPREG_CLUSTER_DIR:-/tmp/lpreg-cluster}"
PORT_BASE="${LPREG_CLUSTER_PORT_BASE:-16810}"
WAIT_S="${LPREG_CLUSTER_WAIT_S:-60}"  # bound on each wait for a daemon
CLUSTER=lpreg
PARTITION=lpreg
CTLD_PORT=$((PORT_BASE + 7)) SLURMD_PORT=$((PORT_BASE + 8)) DBD_PORT=$((PORT_BASE + 9))
MYSQL_PORT=$((PORT_BASE + 10)) PG_PORT=$((PORT_BASE + 11))
PG_URL="postgresql+psycopg://lpreg:lpreg@127.0.0.1:${PG_PORT}/lpreg"
export SLURM_CONF="$DIR/etc/slurm.conf"
# SLURM 22.05 clients reach slurmdbd through munge's default socket whatever AuthInfo says (measured), so munged
# listens there; its PID, log and seed files are under $DIR. A munged already answering there is used as it is.
MUNGE_SOCKET=/run/munge/munge.socket.2
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server postgresql)
NODE="$(hostname -s)"

say() { echo "local_cluster: $*" >&2; }
die() { say "error: $1"; exit "${2:-1}"; }

pg_bin() {  # the newest installed PostgreSQL server's bin folder (Debian keeps them in /usr/lib/postgresql/<v>/bin)
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n "$d" && -x "$d/postgres" ]] && echo "$d"
}

missing_packages() {
  local out=()
  command -v munged >/dev/null || out+=(munge)
  command -v slurmctld >/dev/null || out+=(slurmctld)
  command -v slurmd >/dev/null || out+=(slurmd)
  command -v sbatch >/dev/null && command -v sacct >/dev/null || out+=(slurm-client)
  command -v slurmdbd >/dev/null || out+=(slurmdbd)
  command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null || out+=(mariadb-server)
  pg_bin >/dev/null || out+=(postgresql)
  echo "${out[@]}"
}

cmd_install() {
  local missing
  missing=$(missing_packages)
  [[ -z "$missing" ]] && { say "packages present: ${PACKAGES[*]}"; return 0; }
  [[ $(id -u) -eq 0 ]] || die "missing packages ($missing) and not root: run as root or install them yourself" 3
  command -v apt-get >/dev/null || die "missing packages ($missing) and no apt-get on this machine" 3
  say "installing $missing (apt-get, --no-install-recommends)"
  # Keep the packages from starting their own services: this script starts them with its own folder and ports.
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added=1
  fi
  local rc=0
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; } \
    || rc=$?
  [[ $added -eq 1 ]] && rm -f "$policy"
  [[ $rc -eq 0 ]] || die "apt-get failed (exit $rc) installing: $missing"
  missing=$(missing_packages)
  [[ -z "$missing" ]] || die "still missing after apt-get: $missing"
}

# --- processes, by PID file -------------------------------------------------------------------------------------
# name: PID file, expected process name (/proc/<pid>/comm, to not signal a recycled PID)
pidfile() {
  case $1 in
    munged) echo "$DIR/munge/munged.pid" ;;
    mariadbd) echo "$DIR/mysql/mariadbd.pid" ;;
    postgres) echo "$DIR/pgsql/data/postmaster.pid" ;;
    *) echo "$DIR/run/$1.pid" ;;
  esac
}

alive_pid() {  # prints the PID of daemon $1 if its PID file names a live process of that name
  local f pid
  f=$(pidfile "$1")
  [[ -r $f ]] || return 1
  pid=$(head -1 "$f" | tr -dc 0-9)
  [[ -n $pid && -r /proc/$pid/comm && "$(cat /proc/$pid/comm)" == "$1" ]] && echo "$pid"
}

wait_for() {  # wait_for DAEMON LOGFILE COMMAND...: poll COMMAND every 0.25 s for at most $WAIT_S s
  local what=$1 logf=$2 start=$SECONDS why
  shift 2
  until "$@" >/dev/null 2>&1; do
    why=""
    if ((SECONDS - start >= WAIT_S)); then
      why="not ready after ${WAIT_S}s (set LPREG_CLUSTER_WAIT_S to wait longer)"
    elif ((SECONDS - start >= 5)) && ! alive_pid "${what%% *}" >/dev/null; then
      why="not running 5 s after its start"  # died, or wrote no PID file
    fi
    if [[ -n $why ]]; then
      say "error: $what $why; last lines of $logf:"
      tail -20 "$logf" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.25
  done
}

# --- configuration ----------------------------------------------------------------------------------------------
write_configs() {
  mkdir -p "$DIR"/{etc,run,log,slurmctld,slurmd,munge,mysql,pgsql}
  chmod 755 "$DIR"
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  cat >"$SLURM_CONF" <<EOF
# written by scripts/local_cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/slurmctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=30
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
# written by scripts/local_cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$(pidfile slurmdbd)
LogFile=$DIR/log/slurmdbd.log
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"  # slurmdbd refuses a readable file with a password in it
}

# --- daemons ----------------------------------------------------------------------------------------------------
start_munge() {
  alive_pid munged >/dev/null && return 0
  munge -n --socket="$MUNGE_SOCKET" >/dev/null 2>&1 && { say "using the munged already running"; return 0; }
  mkdir -p "$(dirname "$MUNGE_SOCKET")"
  chown munge:munge "$DIR/munge" "$(dirname "$MUNGE_SOCKET")" && chmod 755 "$DIR/munge"
  runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$(pidfile munged)" \
    --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for munged "$DIR/munge/munged.log" munge -n --socket="$MUNGE_SOCKET"
}

mysql_root() { mariadb --no-defaults --socket="$DIR/mysql/mysqld.sock" -u root "$@"; }

start_mariadb() {
  alive_pid mariadbd >/dev/null && return 0
  chown mysql:mysql "$DIR/mysql"
  if [[ ! -d $DIR/mysql/data/mysql ]]; then
    mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql/data" --skip-test-db \
      --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
      || { tail -20 "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  touch "$DIR/log/mariadb.log" && chown mysql:mysql "$DIR/log/mariadb.log"
  mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql/data" --socket="$DIR/mysql/mysqld.sock" \
    --pid-file="$(pidfile mariadbd)" --port="$MYSQL_PORT" --bind-address=127.0.0.1 \
    --log-error="$DIR/log/mariadb.log" --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
  wait_for mariadbd "$DIR/log/mariadb.log" mysql_root -e "SELECT 1"
  mysql_root -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
                 GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
  alive_pid slurmdbd >/dev/null && return 0
  slurmdbd
  wait_for slurmdbd "$DIR/log/slurmdbd.log" sacctmgr -n list cluster
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

node_ready() { sinfo -h -n "$NODE" -o %T | grep -Eqx '(idle|mixed|allocated)'; }

start_slurm() {
  alive_pid slurmctld >/dev/null || slurmctld
  wait_for slurmctld "$DIR/log/slurmctld.log" scontrol ping
  alive_pid slurmd >/dev/null || slurmd
  wait_for "slurmd (node $NODE)" "$DIR/log/slurmd.log" node_ready
  wait_for "slurmdbd (sacct)" "$DIR/log/slurmdbd.log" sacct -n -X -S now
}

pg() { runuser -u postgres -- "$(pg_bin)/$1" "${@:2}"; }

start_postgres() {
  alive_pid postgres >/dev/null && return 0
  local data=$DIR/pgsql/data
  chown postgres:postgres "$DIR/pgsql"
  if [[ ! -f $data/PG_VERSION ]]; then
    pg initdb -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >"$DIR/log/initdb.log" 2>&1 \
      || { tail -20 "$DIR/log/initdb.log" >&2; die "initdb failed"; }
  fi
  touch "$DIR/log/postgres.log" && chown postgres:postgres "$DIR/log/postgres.log"
  pg pg_ctl -D "$data" -l "$DIR/log/postgres.log" -w -t "$WAIT_S" \
    -o "-p $PG_PORT -k $DIR/pgsql -c listen_addresses=127.0.0.1" start >/dev/null \
    || { tail -20 "$DIR/log/postgres.log" >&2; die "postgres did not start"; }
  local psql=(pg psql -h "$DIR/pgsql" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -q -tA)
  [[ $("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='lpreg'") == 1 ]] \
    || "${psql[@]}" -c "CREATE ROLE lpreg LOGIN PASSWORD 'lpreg'"
  [[ $("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='lpreg'") == 1 ]] \
    || "${psql[@]}" -c "CREATE DATABASE lpreg OWNER lpreg"
}

cmd_start() {
  cmd_install
  [[ $(id -u) -eq 0 ]] || die "starting the daemons needs root (SlurmUser=root, munge/mysql/postgres users)" 3
  getent hosts "$NODE" >/dev/null || die "the host name $NODE does not resolve (add it to /etc/hosts)"
  write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  start_postgres
  say "running under $DIR"
  cmd_env
}

stop_one() {  # SIGTERM, wait up to $WAIT_S s, then SIGKILL
  local pid deadline
  pid=$(alive_pid "$1") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + WAIT_S))
  while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.25; done
  if [[ -d /proc/$pid ]]; then
    say "$1 (pid $pid) ignored SIGTERM for ${WAIT_S}s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  say "stopped $1 (pid $pid)"
}

cmd_stop() {
  local d
  for d in slurmd slurmctld slurmdbd mariadbd munged; do stop_one "$d"; done
  if alive_pid postgres >/dev/null; then
    pg pg_ctl -D "$DIR/pgsql/data" -m fast -w -t "$WAIT_S" stop >/dev/null && say "stopped postgres"
  fi
}

cmd_status() {
  local d pid rc=0
  for d in munged mariadbd slurmdbd slurmctld slurmd postgres; do
    if pid=$(alive_pid "$d"); then echo "$d: running (pid $pid)"; else echo "$d: stopped"; rc=1; fi
  done
  [[ $rc -eq 0 ]] && sinfo -h -N -o "node %N: %T, %c CPUs, %m MB, partition %P"
  return $rc
}

cmd_env() {
  cat <<EOF
export SLURM_CONF=$SLURM_CONF
export LPREG_SLURM_PARTITION=$PARTITION
export LPREG_PG_URL=$PG_URL
EOF
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 install|start|stop|status|env   (folder: \$LPREG_CLUSTER_DIR, default /tmp/lpreg-cluster)" >&2
     exit 2 ;;
esac
