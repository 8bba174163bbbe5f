#!/usr/bin/env bash
# Stop the test cluster that tests/slurm/start.sh DIR started: cancel its jobs, then signal each daemon
# listed in DIR/pids, newest first, by PID (never by name). A PID whose process start time differs from the
# recorded one belongs to someone else now and is left alone. Safe to run twice; exit 1 if one survived.
#
#   tests/slurm/stop.sh DIR
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 1; }
DIR="$(cd "$1" 2> /dev/null && pwd)" || { echo "stop.sh: no directory $1" >&2; exit 1; }
PIDS="$DIR/pids"
# The link start.sh made for commands inside jobs, if it still points into DIR
if [ -L /run/slurm/conf ] && [ "$(readlink /run/slurm/conf)" = "$DIR/etc" ]; then
    rm /run/slurm/conf
    rmdir /run/slurm 2> /dev/null || true
fi
[ -s "$PIDS" ] || { echo "stop.sh: nothing to stop ($PIDS is missing or empty)"; exit 0; }
T0=$(date +%s%N)

ours() {  # pid starttime: is this still the process start.sh recorded, and not yet a zombie?
    local stat
    stat=$(sed 's/^.*) //' "/proc/$1/stat" 2> /dev/null) || return 1
    # fields after "(comm) ": state is the 1st, starttime the 20th; a zombie waits for init to reap it
    [ "$(awk '{print $20}' <<< "$stat")" = "$2" ] && [[ "$(awk '{print $1}' <<< "$stat")" != [ZX] ]]
}

# Cancel the jobs first: their slurmstepd processes would outlive slurmd otherwise
if grep -q '^slurmctld ' "$PIDS" && [ -f "$DIR/etc/slurm.conf" ]; then
    export SLURM_CONF="$DIR/etc/slurm.conf"
    jobs=$(timeout 10 squeue -h -o %i 2> /dev/null)
    if [ -n "$jobs" ]; then
        echo "stop.sh: cancelling jobs $(echo $jobs)"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs || true
        for _ in $(seq 50); do
            [ -z "$(timeout 5 squeue -h -o %i 2> /dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

status=0
while read -r name pid starttime; do
    if ! ours "$pid" "$starttime"; then
        echo "stop.sh: $name (pid $pid) is not running"
        continue
    fi
    t=$(date +%s%N)
    kill -TERM "$pid"
    for _ in $(seq 100); do
        ours "$pid" "$starttime" || break
        sleep 0.1
    done
    if ours "$pid" "$starttime"; then
        echo "stop.sh: $name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid"
        sleep 0.5
    fi
    if ours "$pid" "$starttime"; then
        echo "stop.sh: $name (pid $pid) is still running" >&2
        status=1
    else
        echo "stop.sh: stopped $name (pid $pid) in $((($(date +%s%N) - t) / 1000000)) ms"
    fi
done < <(tac "$PIDS")

[ $status -eq 0 ] && mv "$PIDS" "$PIDS.stopped"
ms=$((($(date +%s%N) - T0) / 1000000))
printf 'stop.sh: done in %d.%03d s\n' $((ms / 1000)) $((ms % 1000))
exit $status
