#!/usr/bin/env bash
# Start a private single-node SLURM cluster for tests: munge, MariaDB + slurmdbd (accounting), slurmctld,
# slurmd, with config, state, logs, sockets and pid files under DIR.
#
#   tests/slurm/start.sh DIR      (as root; installs the Debian packages with apt-get when missing)
#   source DIR/env.sh             (SLURM_CONF and the cluster's names, for sbatch/sacct/snakemake)
#   tests/slurm/stop.sh DIR       (stops every daemon this script started, by PID)
#
# DIR/pids lists what was started, one "name pid starttime" per line (starttime from /proc/PID/stat, so
# stop.sh never signals a recycled PID). The node declares SLURM_TEST_GPUS GPUs of type SLURM_TEST_GPU_MODEL
# (environment; default 4 and t4): SLURM schedules and accounts them, no hardware stands behind them.
#
# Exit status: 0 cluster idle and ready; 3 SLURM cannot be installed here (not root, no apt-get, apt-get
# failed): callers skip on 3; 1 anything else (the daemons' logs are printed, what started is stopped).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
NEEDED=(munged mungekey slurmctld slurmd slurmdbd sbatch sacct sacctmgr sinfo scontrol mariadbd mariadb-install-db mariadb mariadb-admin)
CLUSTER=clinsum
PARTITION=test
ACCOUNT=clinsum
GPU_MODEL="${SLURM_TEST_GPU_MODEL:-t4}"
GPU_COUNT="${SLURM_TEST_GPUS:-4}"

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 1; }
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
T0=$(date +%s%N)
log() { local ms=$((($(date +%s%N) - T0) / 1000000)); printf '[start.sh %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
cannot_install() { echo "start.sh: SLURM cannot be installed here: $*" >&2; exit 3; }

missing() { local b; for b in "${NEEDED[@]}"; do command -v "$b" > /dev/null || { echo "$b"; return; }; done; }
if [ -n "$(missing)" ]; then
    [ "$(id -u)" -eq 0 ] || cannot_install "$(missing) is missing and installing it needs root"
    command -v apt-get > /dev/null || cannot_install "$(missing) is missing and there is no apt-get"
    log "installing ${PACKAGES[*]} (missing: $(missing))"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq > "$DIR/apt.log" 2>&1 || { tail -5 "$DIR/apt.log" >&2; cannot_install "apt-get update failed"; }
    apt-get install -y -qq "${PACKAGES[@]}" >> "$DIR/apt.log" 2>&1 \
        || { tail -5 "$DIR/apt.log" >&2; cannot_install "apt-get install ${PACKAGES[*]} failed"; }
    [ -z "$(missing)" ] || cannot_install "$(missing) still missing after apt-get install"
fi
# The daemons run as root (their state lives in a root-only directory, e.g. pytest's tmp_path)
[ "$(id -u)" -eq 0 ] || cannot_install "the daemons are started as root and this is uid $(id -u)"

# Jobs find the cluster's config through /run/slurm/conf (see slurmd below), unless these exist
if [ -e /etc/slurm/slurm.conf ]; then
    echo "start.sh: /etc/slurm/slurm.conf exists: commands inside jobs would read it instead of this cluster's" >&2
    exit 1
fi
if [ -e /run/slurm/conf ] || [ -L /run/slurm/conf ]; then
    echo "start.sh: /run/slurm/conf exists ($(readlink /run/slurm/conf)): another cluster's config for jobs" >&2
    exit 1
fi
if [ -s "$DIR/pids" ]; then
    echo "start.sh: $DIR/pids exists: a cluster was started here; run stop.sh $DIR first" >&2
    exit 1
fi
mkdir -p "$DIR"/{etc,dev,munge,mysql,state,spool/slurmd,log,run}
: > "$DIR/pids"

record() {  # name pid: append to DIR/pids with the process's start time
    local starttime
    starttime=$(sed 's/^.*) //' "/proc/$2/stat" | awk '{print $20}')
    echo "$1 $2 $starttime" >> "$DIR/pids"
}
pid_from_file() {  # name pidfile timeout_s: wait for a daemon's pid file, record the pid
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        if [ -s "$2" ] && kill -0 "$(cat "$2")" 2> /dev/null; then record "$1" "$(cat "$2")"; return; fi
        sleep 0.1
    done
    echo "start.sh: $1 wrote no live pid to $2 within $3 s" >&2
    return 1
}
wait_for() {  # description timeout_s command...: retry the command (10 s at most per try) until it succeeds
    local what=$1 limit=$2
    local deadline=$((SECONDS + limit))
    shift 2
    until timeout 10 "$@" > /dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "start.sh: $what: not ready within $limit s" >&2
            return 1
        fi
        sleep 0.2
    done
}
# From here on, any failure (set -e, set -u, a timeout) prints the logs and stops what was started
started=no
on_exit() {
    [ "$started" = no ] || return 0
    echo "start.sh: failed; last lines of the logs under $DIR/log:" >&2
    tail -n 15 "$DIR"/log/*.log >&2 || true
    "$HERE/stop.sh" "$DIR" >&2 || true
    exit 1
}
trap on_exit EXIT

# Free TCP ports on 127.0.0.1, so that a cluster already on this machine (or another test) is not disturbed
read -r SLURMCTLD_PORT SLURMD_PORT SLURMDBD_PORT MARIADB_PORT < <(python3 - << 'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
HOST=$(hostname -s)
NODE_LINE=$(slurmd -C | head -1)                  # NodeName=<host> CPUs=... RealMemory=...
NODE=$(sed 's/^NodeName=\([^ ]*\).*/\1/' <<< "$NODE_LINE")
DB_PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

render() {  # template output: fill in the @NAME@ placeholders
    sed -e "s|@DIR@|$DIR|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" -e "s|@NODE@|$NODE|g" \
        -e "s|@NODE_LINE@|$NODE_LINE|g" -e "s|@PARTITION@|$PARTITION|g" -e "s|@GPU_MODEL@|$GPU_MODEL|g" \
        -e "s|@GPU_COUNT@|$GPU_COUNT|g" -e "s|@LAST_GPU@|$((GPU_COUNT - 1))|g" -e "s|@SLURMCTLD_PORT@|$SLURMCTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@SLURMDBD_PORT@|$SLURMDBD_PORT|g" \
        -e "s|@MARIADB_PORT@|$MARIADB_PORT|g" -e "s|@DB_PASSWORD@|$DB_PASSWORD|g" "$1" > "$2"
}
render "$HERE/slurm.conf.in" "$DIR/etc/slurm.conf"
render "$HERE/gres.conf.in" "$DIR/etc/gres.conf"
# slurmd wants a character device behind each GPU: copies of /dev/null (1,3); plain files if mknod fails
for ((i = 0; i < GPU_COUNT; i++)); do mknod -m 600 "$DIR/dev/gpu$i" c 1 3 2> /dev/null || : > "$DIR/dev/gpu$i"; done
( umask 077 && render "$HERE/slurmdbd.conf.in" "$DIR/etc/slurmdbd.conf" )
# Every SLURM command and daemon finds slurm.conf (and slurmdbd.conf, gres.conf beside it) through this
export SLURM_CONF="$DIR/etc/slurm.conf"
cat > "$DIR/env.sh" << EOF
export SLURM_CONF=$SLURM_CONF
export CLINSUM_TEST_SLURM_CLUSTER=$CLUSTER
export CLINSUM_TEST_SLURM_PARTITION=$PARTITION
export CLINSUM_TEST_SLURM_ACCOUNT=$ACCOUNT
export CLINSUM_TEST_SLURM_GPU_MODEL=$GPU_MODEL
export CLINSUM_TEST_SLURM_GPUS=$GPU_COUNT
EOF

# munge: a private key and socket. --force: munged insists that every directory above its socket be
# world-executable; here every client is root, so that check protects nobody and DIR may stay 0700.
log "munged"
mungekey --create --keyfile="$DIR/munge/munge.key"
munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
pid_from_file munged "$DIR/run/munged.pid" 10

# MariaDB for slurmdbd: a fresh data directory, TCP on 127.0.0.1 only. mariadbd stays in the foreground.
log "mariadbd"
mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --auth-root-authentication-method=socket \
    --skip-test-db > "$DIR/log/mariadb-install-db.log" 2>&1
setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$DIR/run/mariadb.sock" \
    --bind-address=127.0.0.1 --port="$MARIADB_PORT" --skip-name-resolve --pid-file="$DIR/run/mariadbd.pid" \
    --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
    < /dev/null > /dev/null 2>&1 &
record mariadbd $!
wait_for "mariadbd on $DIR/run/mariadb.sock" 60 \
    mariadb-admin --no-defaults --socket="$DIR/run/mariadb.sock" -u root ping
mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -u root << EOF
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF

# Inside a job, the executor plugin's jobstep runs `srun` with every SLURM_* variable but a few removed,
# SLURM_CONF included. Without it, SLURM commands read /etc/slurm/slurm.conf or else /run/slurm/conf/slurm.conf
# (where a "configless" slurmd keeps the config it fetched): link the latter to this cluster's config, as on
# a real compute node. (Real configless mode cannot work here: slurmd would fetch the config before it knows
# the private munge socket.) stop.sh removes the link.
mkdir -p /run/slurm
ln -s "$DIR/etc" /run/slurm/conf

# slurmdbd before slurmctld, and the associations before the first job (AccountingStorageEnforce)
log "slurmdbd"
slurmdbd
pid_from_file slurmdbd "$DIR/run/slurmdbd.pid" 30
wait_for "slurmdbd on port $SLURMDBD_PORT" 60 sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" > /dev/null
sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="clinsum tests" Organization=clinsum > /dev/null
sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" > /dev/null

log "slurmctld, slurmd"
slurmctld
pid_from_file slurmctld "$DIR/run/slurmctld.pid" 30
slurmd
pid_from_file slurmd "$DIR/run/slurmd.pid" 30

wait_for "node $NODE idle (sinfo -h -o %T)" 60 sh -c '[ "$(sinfo -h -o %T)" = idle ]'
started=yes
log "cluster $CLUSTER up: partition $PARTITION, account $ACCOUNT, node $NODE, gres gpu:$GPU_MODEL:$GPU_COUNT"
log "SLURM_CONF=$SLURM_CONF; pids in $DIR/pids"
