#!/usr/bin/env bash
# A private Slurm cluster for the project's tests: one node, or a
# controller and N compute nodes on this machine.
#
#   cluster.sh deps [accounting]  install slurm-wlm + munge from Debian if
#                            missing; with accounting (or CLUSTER_ACCOUNTING=1)
#                            also slurmdbd + mariadb-server
#   cluster.sh start DIR [N] start munged, slurmctld and slurmd (N > 1: N of them)
#                            with all state in DIR; prints `export ...` lines
#                            for clients on stdout:
#                              env=$(tests/cluster/cluster.sh start "$DIR") &&
#                                  eval "$env"
#                            (plain eval "$(...)" would hide a failed start)
#   cluster.sh stop DIR      stop the daemons by their pid files (idempotent);
#                            with N nodes also their namespaces and network
#   cluster.sh status DIR    print the state of each daemon; exit 0 iff all run
#   cluster.sh env DIR       print the client environment again
#   cluster.sh kill-node DIR NODE    a node dies: SIGKILL to every process in
#                            its namespaces (slurmd, the job steps, their QEMUs)
#   cluster.sh start-node DIR NODE   start a dead node's slurmd again
#
# With N > 1 nodes (node1..nodeN), each slurmd runs in its own network and
# UTS namespace: its own host name and an address on a private bridge
# (CLUSTER_NET.11, .12, ...; the controller is CLUSTER_NET.1 on the bridge),
# all on this machine only.  DIR/shared plays the shared file system: every
# node sees it at that path except the last, which sees it at
# DIR/elsewhere/shared (its original path is hidden there), so nothing may
# assume one path.  Each node's job steps get TMPDIR=DIR/nodes/NODE/tmp
# (a TaskProlog): node-local scratch.  One munged (one key) serves all.
#
# Nothing system-wide is touched: munged gets a private key, socket, pid, log
# and seed file under DIR/munge, and slurm.conf points Slurm at that socket
# (AuthInfo=socket=...). All daemons run as root. Progress goes to stderr.
#
# With CLUSTER_ACCOUNTING=1, start also runs a private MariaDB (data, socket,
# pid and log under DIR/db; 127.0.0.1:CLUSTER_DB_PORT) and a slurmdbd
# (DIR/slurmdbd.conf, listening on CLUSTER_DBD_PORT) before slurmctld, and
# slurm.conf sends every job there: sacct answers, also for jobs long gone
# from squeue.  Each start begins with an empty database.  Without it sacct
# fails ("Slurm accounting storage is disabled", exit 1); nothing else changes.
# slurmctld registers the cluster itself.  Slurm 22.05's sacct -X lists a job
# array's started elements one line each (ID_I); those never started share
# one line (ID_[I-J], PENDING, or CANCELLED when the array was); pending
# elements cancelled alone (scancel ID_[I-J]) leave no line at all.
#
# Environment knobs:
#   CLUSTER_CTLD_PORT    slurmctld port (default 6817)
#   CLUSTER_SLURMD_PORT  slurmd port    (default 6818)
#   CLUSTER_TIMEOUT      seconds to wait for the node to become idle (30)
#   CLUSTER_MIN_JOB_AGE  slurm.conf MinJobAge (4; makes sbatch --wait poll
#                        every 2 s instead of after 2, 10, 42 s, ...)
#   CLUSTER_NET          the bridge's /24 with N nodes (default 10.213.7)
#   CLUSTER_MAX_ARRAY_SIZE, CLUSTER_MAX_JOB_COUNT  slurm.conf's MaxArraySize and
#                        MaxJobCount (default: unset, Slurm's 1001 and 10000)
#   CLUSTER_SLURMD_TIMEOUT  seconds before a silent node is declared down
#                        (N nodes: 10; one node: 30)
#   CLUSTER_ACCOUNTING   1: job accounting, slurmdbd + MariaDB (install them
#                        with `cluster.sh deps accounting`); default 0: none
#   CLUSTER_DB_PORT      MariaDB's port with accounting (default 6819)
#   CLUSTER_DBD_PORT     slurmdbd's port with accounting (default 6820)
set -euo pipefail

PROG=$(basename "$0")
CTLD_PORT=${CLUSTER_CTLD_PORT:-6817}
SLURMD_PORT=${CLUSTER_SLURMD_PORT:-6818}
TIMEOUT=${CLUSTER_TIMEOUT:-30}
MIN_JOB_AGE=${CLUSTER_MIN_JOB_AGE:-4}
NET=${CLUSTER_NET:-10.213.7}
ACCOUNTING=${CLUSTER_ACCOUNTING:-0}
DB_PORT=${CLUSTER_DB_PORT:-6819}
DBD_PORT=${CLUSTER_DBD_PORT:-6820}
DB_SQL=/usr/share/mysql # mariadb-server-core's SQL for a new database

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

check_accounting() {
    case $ACCOUNTING in 0 | 1) ;; *) die "CLUSTER_ACCOUNTING must be 0 or 1, not '$ACCOUNTING'" ;; esac
}

have_all() {
    local b bins=(munged mungekey slurmctld slurmd sbatch sinfo squeue scontrol)
    # With accounting: slurmdbd (and its mysql plugin), MariaDB, sacct.
    [ "$ACCOUNTING" = 1 ] && bins+=(slurmdbd mariadbd sacct sacctmgr)
    for b in "${bins[@]}"; do
        command -v "$b" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null 2>&1 || return 1
    done
    [ "$ACCOUNTING" = 1 ] || return 0
    [ -f "$DB_SQL/mysql_system_tables_data.sql" ] &&
        compgen -G "/usr/lib/*/slurm-wlm/accounting_storage_mysql.so" >/dev/null
}

cmd_deps() {
    need_root
    check_accounting
    export PATH=$PATH:/usr/sbin:/sbin
    local pkgs=(slurm-wlm munge) what="slurm-wlm and munge"
    if [ "$ACCOUNTING" = 1 ]; then
        pkgs+=(slurmdbd mariadb-server) what="slurm-wlm, munge, slurmdbd and mariadb-server"
    fi
    if have_all; then
        log "$what already installed"
        return 0
    fi
    local t0 t1
    t0=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -s -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1; then
        apt-get update -qq >&2 || true
    fi
    # Debian containers ship a policy-rc.d that stops postinst from starting
    # the system munge/slurm/mariadb services. Without one, a system munged may
    # start (harmless: ours uses its own socket); we only warn below.  A system
    # mariadbd or slurmdbd is stopped (ours use their own ports and sockets
    # anyway).
    local out
    out=$(mktemp)
    if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$out" 2>&1; then
        tail -n 30 "$out" >&2
        rm -f "$out"
        die "apt-get install failed"
    fi
    grep -E 'newly installed|^Need to get|^After this operation' "$out" >&2 || true
    rm -f "$out"
    t1=$(date +%s)
    have_all || die "install finished but binaries are missing"
    log "installed $what in $((t1 - t0)) s"
    if pgrep -x munged >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        log "warning: the package install started system daemons (pgrep munged/slurmctld/slurmd)"
    fi
    if [ "$ACCOUNTING" = 1 ]; then
        # The system services' pid files (not pgrep: that also finds the
        # private daemons of a test cluster running now).
        local name file
        for name in "mariadbd /run/mysqld/mysqld.pid" "mysqld /run/mysqld/mysqld.pid" "slurmdbd /run/slurmdbd.pid"; do
            read -r name file <<<"$name"
            if pid_of "$name" "$file" >/dev/null; then
                log "the package install started a system $name; stopping it"
                stop_one "$name" "$file"
            fi
        done
    fi
}

# ---------------------------------------------------------------- helpers

abspath() { mkdir -p "$1" && (cd "$1" && pwd -P); }

# pid_of NAME PIDFILE: print the pid if PIDFILE names a live process called NAME
pid_of() {
    local name=$1 file=$2 pid comm state
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' 2>/dev/null <"$file") || return 1
    [ -n "$pid" ] || return 1
    [ -r "/proc/$pid/stat" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ] || return 1
    # slurmd/slurmctld are Debian alternatives: slurmd-wlm, slurmctld-wlm
    case "$comm" in
        "$name" | "$name"-wlm) printf '%s\n' "$pid" ;;
        *) return 1 ;;
    esac
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# listening PORT: something listens on PORT here (no connection made: a
# daemon would log the empty one)
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

env_lines() {
    local dir=$1
    printf 'export SLURM_CONF=%q\n' "$dir/slurm.conf"
    # Not read by Slurm or munge itself (Slurm takes the socket from
    # AuthInfo in slurm.conf); for `munge -S "$CLUSTER_MUNGE_SOCKET"` etc.
    printf 'export CLUSTER_MUNGE_SOCKET=%q\n' "$dir/munge/munge.socket.2"
    if [ "$(node_count "$dir")" -gt 1 ]; then
        printf 'export CLUSTER_NODES=%q\n' "$(node_count "$dir")"
        printf 'export CLUSTER_SHARED=%q\n' "$dir/shared"
        printf 'export CLUSTER_SHARED_ELSEWHERE=%q\n' "$dir/elsewhere/shared"
    fi
}

write_conf() {
    local dir=$1 host=$2 nodes=${3:-1} cpus mem i
    # CPUs and RealMemory as slurmd itself detects them, so the node never
    # registers with less than configured. No Sockets/Cores/Threads: with
    # CR_CPU that lets every hardware thread take a job.
    cpus=$(slurmd -C 2>/dev/null | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' | head -n1)
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' | head -n1)
    [ -n "$cpus" ] || cpus=$(nproc)
    [ -n "$mem" ] || mem=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
    # One node: slurmd beside slurmctld on 127.0.0.1.  N nodes: each at its
    # address on the bridge, with two CPUs (what this machine has: an array
    # task asking for two, tasks_per_node=2, takes a whole node), its own pid
    # and log file, node-local scratch from a TaskProlog, jobs on a node that
    # fails requeued, and a node declared down after 10 s of silence.
    local ctl=127.0.0.1 suffix= timeout=${CLUSTER_SLURMD_TIMEOUT:-30} extra= nodelines partnodes=$host limits= acct
    # Slurm's own limits (MaxArraySize 1001, MaxJobCount 10000) unless asked:
    # the engine must live with a cluster's defaults.
    [ -n "${CLUSTER_MAX_ARRAY_SIZE:-}" ] && limits="MaxArraySize=$CLUSTER_MAX_ARRAY_SIZE\n"
    [ -n "${CLUSTER_MAX_JOB_COUNT:-}" ] && limits="${limits}MaxJobCount=$CLUSTER_MAX_JOB_COUNT\n"
    limits=$(printf '%b' "$limits")
    nodelines="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    if [ "$nodes" -gt 1 ]; then
        ctl=$NET.1 suffix=-%n timeout=${CLUSTER_SLURMD_TIMEOUT:-10} partnodes="node[1-$nodes]"
        extra=$(printf 'TaskProlog=%s\n# Batch jobs on a node that fails go back to the queue.\nJobRequeue=1' "$dir/taskprolog.sh")
        nodelines=$(for ((i = 1; i <= nodes; i++)); do
            echo "NodeName=node$i NodeAddr=$NET.$((10 + i)) CPUs=${CLUSTER_NODE_CPUS:-2} RealMemory=$mem State=UNKNOWN"
        done)
        cat >"$dir/taskprolog.sh" <<EOF
#!/bin/sh
# Node-local scratch for every job step (what sites do with TMPDIR).
d=$dir/nodes/\$(hostname)/tmp
mkdir -p "\$d" && echo "export TMPDIR=\$d"
EOF
        chmod 755 "$dir/taskprolog.sh"
    fi
    # Accounting: slurmdbd listens on all of this machine's addresses; the
    # controller's address is the one the nodes (and their jobs' sacct) reach.
    # Talking to slurmdbd, Slurm takes munge's socket from
    # AccountingStoragePass, not AuthInfo.
    acct=$(printf 'JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none')
    if [ "$ACCOUNTING" = 1 ]; then
        acct=$(printf '%s\n' 'JobAcctGatherType=jobacct_gather/linux' \
            'AccountingStorageType=accounting_storage/slurmdbd' \
            "AccountingStorageHost=$ctl" "AccountingStoragePort=$DBD_PORT" \
            "AccountingStoragePass=$dir/munge/munge.socket.2")
    fi
    cat >"$dir/slurm.conf" <<EOF
# Generated by tests/cluster/cluster.sh: a private test cluster of $nodes node(s).
ClusterName=qshelltest
SlurmctldHost=$host($ctl)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd-%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd$suffix.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd$suffix.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$extra
SelectType=select/cons_tres
# Memory is not a consumable resource: jobs need no --mem.
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Schedule batch jobs at once (default: up to 3 s later).
SchedulerParameters=batch_sched_delay=0
$acct
JobCompType=jobcomp/none
MpiDefault=none
# A node that comes back registers as usable again.
ReturnToService=2
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=$timeout
InactiveLimit=0
# sbatch --wait polls after 2, 10, 42 s... unless MinJobAge <= 4: then every 2 s.
# Finished jobs then leave squeue/scontrol 4..~60 s after they end.
MinJobAge=$MIN_JOB_AGE
KillWait=5
Waittime=0
$limits
$nodelines
PartitionName=debug Nodes=$partnodes Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# ---------------------------------------------------------------- N nodes

# The names of this cluster's namespaces and links: short (15 characters
# for a link) and distinct per DIR.
net_id() { printf '%s' "$1" | cksum | awk '{printf "%05d", $1 % 100000}'; }
ns_name() { printf 'qshell%s-%s' "$(net_id "$1")" "$2"; }
bridge_name() { printf 'qsb%s' "$(net_id "$1")"; }
veth_name() { printf 'qsv%s%s' "$(net_id "$1")" "${2#node}"; }
node_count() { cat "$1/node-count" 2>/dev/null || echo 1; }

# The private network: a bridge with the controller's address.
net_up() {
    local dir=$1 br
    br=$(bridge_name "$dir")
    ip link show "$br" >/dev/null 2>&1 && die "bridge $br exists (a cluster in $dir not stopped?)"
    ip link add "$br" type bridge
    ip addr add "$NET.1/24" dev "$br"
    ip link set "$br" up
}

# Start node NAME's slurmd in its namespaces (made the first time).
node_up() {
    local dir=$1 node=$2 nodes ns veth i
    nodes=$(node_count "$dir")
    i=${node#node}
    ns=$(ns_name "$dir" "$node")
    veth=$(veth_name "$dir" "$node")
    if ! ip netns list | grep -qw "$ns"; then
        # (`ip netns add` warns where / is not a mount point, in a chroot)
        ip netns add "$ns" 2> >(grep -v 'make-rslave' >&2)
        ip link add "$veth" type veth peer name "${veth}p"
        ip link set "$veth" master "$(bridge_name "$dir")"
        ip link set "$veth" up
        ip link set "${veth}p" netns "$ns"
        local in_ns=(nsenter --net="/run/netns/$ns")
        "${in_ns[@]}" ip link set "${veth}p" name eth0
        "${in_ns[@]}" ip addr add "$NET.$((10 + i))/24" dev eth0
        "${in_ns[@]}" ip link set eth0 up
        "${in_ns[@]}" ip link set lo up
    fi
    mkdir -p "$dir/nodes/$node/tmp" "$dir/spool/slurmd-$node"
    # Its own host name; the last node sees the shared directory elsewhere.
    local view=""
    if [ "$i" = "$nodes" ]; then
        mkdir -p "$dir/elsewhere/shared"
        view="mount --bind $dir/shared $dir/elsewhere/shared && mount -t tmpfs -o size=1m,mode=0755 hidden $dir/shared &&"
    fi
    # nsenter, not `ip netns exec`: that remounts /sys, without the cgroup
    # file system slurmd wants.  The node's mounts stay its own: the mount
    # holding DIR is made private in its namespace (not "/": in a chroot
    # that is no mount point).
    nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation unchanged -- sh -c \
        "hostname $node && mount --make-rprivate \"\$(findmnt -n -o TARGET --target $dir)\" && $view exec slurmd -f $dir/slurm.conf -N $node" >&2 ||
        { log "slurmd on $node failed; see $dir/log/slurmd-$node.log"; return 1; }
}

# kill-node: everything in the node's network namespace dies at once.
cmd_kill_node() {
    local dir ns pids i
    dir=$(cd "$1" && pwd -P)
    ns=$(ns_name "$dir" "$2")
    ip netns list | grep -qw "$ns" || die "no node $2 in $dir"
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
        sleep 0.1
    done
    rm -f "$dir/run/slurmd-$2.pid"
    log "node $2 killed (pids: $(echo $pids))"
}

cmd_start_node() {
    need_root
    local dir
    dir=$(cd "$1" && pwd -P)
    [ -f "$dir/slurm.conf" ] || die "no cluster in $dir"
    pid_of slurmd "$dir/run/slurmd-$2.pid" >/dev/null && die "$2 runs already"
    node_up "$dir" "$2" || die "start failed"
    log "node $2 started"
}

net_down() {
    local dir=$1 nodes i ns pids
    nodes=$(node_count "$dir")
    for ((i = 1; i <= nodes; i++)); do
        ns=$(ns_name "$dir" "node$i")
        if ip netns list 2>/dev/null | grep -qw "$ns"; then
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    ip link del "$(bridge_name "$dir")" 2>/dev/null || true
}

# ---------------------------------------------------------------- accounting

# alive PID: PID runs (a zombie does not)
alive() { [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ] && [ -e "/proc/$1" ]; }

# The private MariaDB: a fresh database in DIR/db, run as root, on
# 127.0.0.1:DB_PORT and its own socket.  root logs in without a password
# (over TCP too: slurmdbd does); only this machine reaches the port.
db_up() {
    local dir=$1 pid i
    rm -rf "$dir/db"
    mkdir -p "$dir/db"
    # --defaults-file: nothing from /etc/mysql.  Small InnoDB files and no
    # syncs: this database needs no durability, and the defaults cost seconds.
    cat >"$dir/db/my.cnf" <<EOF
[mariadbd]
user=root
datadir=$dir/db/data
socket=$dir/db/mariadbd.sock
pid-file=$dir/db/mariadbd.pid
log-error=$dir/db/mariadbd.log
port=$DB_PORT
bind-address=127.0.0.1
skip-name-resolve
innodb_buffer_pool_size=32M
innodb_log_file_size=16M
innodb_lock_wait_timeout=900
innodb_flush_log_at_trx_commit=0
innodb_doublewrite=0
[client]
socket=$dir/db/mariadbd.sock
user=root
EOF
    # The system tables: what mariadb-install-db
    # --auth-root-authentication-method=normal feeds mariadbd --bootstrap,
    # less the help tables, GIS procedures and sys schema (2/3 of its time,
    # and nothing here uses them).
    mkdir -p "$dir/db/data"
    { printf 'create database if not exists mysql;\nuse mysql;\nSET @auth_root_socket=NULL;\n'
        cat "$DB_SQL/mysql_system_tables.sql" "$DB_SQL/mysql_performance_tables.sql" \
            "$DB_SQL/mysql_system_tables_data.sql"
    } | mariadbd --defaults-file="$dir/db/my.cnf" --bootstrap --log-warnings=0 \
        --enforce-storage-engine= --max_allowed_packet=8M --net_buffer_length=16K \
        >"$dir/db/install.log" 2>&1 ||
        { tail -n 20 "$dir/db/mariadbd.log" >&2; log "mariadbd --bootstrap failed; see $dir/db/mariadbd.log"; return 1; }
    # mariadbd stays in the foreground: detach it (setsid, no tty, no pipe
    # of the caller's held open).
    setsid mariadbd --defaults-file="$dir/db/my.cnf" </dev/null >>"$dir/db/mariadbd.log" 2>&1 &
    pid=$!
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        [ -S "$dir/db/mariadbd.sock" ] && listening "$DB_PORT" && return 0
        alive "$pid" || break
        sleep 0.1
    done
    tail -n 5 "$dir/db/mariadbd.log" >&2 || true
    log "mariadbd did not start; see $dir/db/mariadbd.log"
    return 1
}

# slurmdbd on DBD_PORT, keeping its accounts in the private MariaDB.  It
# reads slurmdbd.conf beside $SLURM_CONF and wants it private (mode 600).
dbd_up() {
    local dir=$1 host=$2 i
    rm -f "$dir/slurmdbd.conf"
    (umask 077 && cat >"$dir/slurmdbd.conf" <<EOF
# Generated by tests/cluster/cluster.sh: the test cluster's accounting.
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket.2
DbdHost=$host
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
DebugLevel=info
EOF
    )
    SLURM_CONF=$dir/slurm.conf slurmdbd >&2 || { log "slurmdbd failed; see $dir/log/slurmdbd.log"; return 1; }
    # It listens once its tables exist (a first start creates them).
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        listening "$DBD_PORT" && return 0
        [ "$i" -lt 20 ] || pid_of slurmdbd "$dir/run/slurmdbd.pid" >/dev/null || break
        sleep 0.1
    done
    tail -n 5 "$dir/log/slurmdbd.log" >&2 || true
    log "slurmdbd did not start; see $dir/log/slurmdbd.log"
    return 1
}

# ---------------------------------------------------------------- status

# The daemons of a cluster: "name pidfile" lines.
daemons() {
    local dir=$1 nodes i
    nodes=$(node_count "$dir")
    echo "munged $dir/munge/munged.pid"
    if [ -f "$dir/slurmdbd.conf" ]; then
        echo "mariadbd $dir/db/mariadbd.pid"
        echo "slurmdbd $dir/run/slurmdbd.pid"
    fi
    echo "slurmctld $dir/run/slurmctld.pid"
    if [ "$nodes" -gt 1 ]; then
        for ((i = 1; i <= nodes; i++)); do echo "slurmd $dir/run/slurmd-node$i.pid"; done
    else
        echo "slurmd $dir/run/slurmd.pid"
    fi
}

cmd_status() {
    local dir=$1 n=0 all=0 p name file
    [ -d "$dir" ] || { echo "not running (no directory $dir)"; return 1; }
    dir=$(cd "$dir" && pwd -P)
    while read -r name file; do
        all=$((all + 1))
        if p=$(pid_of "$name" "$file"); then
            echo "$name ($(basename "$file" .pid)): running (pid $p)"
            n=$((n + 1))
        else
            echo "$name ($(basename "$file" .pid)): stopped"
        fi
    done < <(daemons "$dir")
    if [ "$n" = "$all" ]; then
        local st
        st=$(SLURM_CONF=$dir/slurm.conf sinfo -h -o '%N %t' 2>/dev/null || true)
        echo "cluster: running in $dir (node: ${st:-unknown})"
        return 0
    elif [ "$n" = 0 ]; then
        echo "cluster: not running in $dir"
        return 1
    else
        echo "cluster: partly running in $dir ($n of $all daemons)"
        return 1
    fi
}

# ---------------------------------------------------------------- stop

stop_one() {
    local name=$1 file=$2 pid i
    pid=$(pid_of "$name" "$file") || { rm -f "$file"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do # 15 s
        pid_of "$name" "$file" >/dev/null || break
        sleep 0.1
    done
    if pid_of "$name" "$file" >/dev/null; then
        log "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            pid_of "$name" "$file" >/dev/null || break
            sleep 0.1
        done
    fi
    pid_of "$name" "$file" >/dev/null && die "$name (pid $pid) does not stop"
    rm -f "$file"
    STOPPED_PIDS+=("$pid")
}

STOPPED_PIDS=()
cmd_stop() {
    local dir=$1
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd -P)
    local name file
    while read -r name file; do
        [ "$name" = slurmd ] && stop_one slurmd "$file"
    done < <(daemons "$dir")
    stop_one slurmctld "$dir/run/slurmctld.pid"
    stop_one slurmdbd "$dir/run/slurmdbd.pid"
    stop_one mariadbd "$dir/db/mariadbd.pid"
    stop_one munged "$dir/munge/munged.pid"
    [ "$(node_count "$dir")" -gt 1 ] && net_down "$dir"
    # The daemons are children of pid 1; until it reaps them they linger as
    # zombies (pgrep still lists them; under gVisor this takes 1-4 s). Wait
    # (bounded) so callers see a clean process table.
    local i p left
    for ((i = 0; i < 80; i++)); do
        left=0
        for p in "${STOPPED_PIDS[@]}"; do [ -e "/proc/$p" ] && left=1; done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    log "stopped cluster in $dir"
}

# ---------------------------------------------------------------- start

cmd_start() {
    need_root
    check_accounting
    export PATH=$PATH:/usr/sbin:/sbin
    have_all || die "slurm/munge not installed; run: $0 deps"
    local dir host i st t0 nodes=${2:-1}
    case $nodes in [1-9] | [1-9][0-9]) ;; *) die "N must be a number of nodes, 1..99" ;; esac
    t0=$(date +%s%N)
    dir=$(abspath "$1")
    case $dir in *[[:space:]]*) die "DIR must not contain white space: $dir" ;; esac
    host=$(hostname -s)

    local running=0 name file
    while read -r name file; do
        if pid_of "$name" "$file" >/dev/null; then running=1; fi
    done < <(daemons "$dir")
    [ "$running" = 0 ] || die "a cluster already runs in $dir (stop it first: $0 stop $dir)"
    local ports=("$CTLD_PORT")
    [ "$nodes" = 1 ] && ports+=("$SLURMD_PORT") # N nodes: slurmd listens in their namespaces
    [ "$ACCOUNTING" = 1 ] && ports+=("$DB_PORT" "$DBD_PORT")
    for p in "${ports[@]}"; do
        port_busy "$p" && die "port $p is in use (another Slurm cluster running?); set CLUSTER_CTLD_PORT/CLUSTER_SLURMD_PORT (and CLUSTER_DB_PORT/CLUSTER_DBD_PORT)"
    done
    echo "$nodes" >"$dir/node-count"
    # Accounting or not: this start's choice, not an earlier one's.
    [ "$ACCOUNTING" = 1 ] || rm -rf "$dir/db" "$dir/slurmdbd.conf"

    # munged: checks that the socket dir is world-executable and the key is
    # private, so DIR/munge is 0755 and the key 0600.
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/run" "$dir/log"
    chmod a+x "$dir"
    chmod 755 "$dir/munge"
    [ -s "$dir/munge/munge.key" ] || mungekey -c -k "$dir/munge/munge.key"
    chmod 600 "$dir/munge/munge.key"
    rm -f "$dir/munge/munge.socket.2" "$dir/munge/munge.socket.2.lock"

    # If anything below fails, do not leave half a cluster behind.
    trap 'log "start failed; logs in $dir/log and $dir/munge/munged.log"; cmd_stop "$dir" >/dev/null 2>&1 || true' ERR

    munged --socket="$dir/munge/munge.socket.2" \
        --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" \
        --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed" >&2 ||
        { cmd_stop "$dir" 2>/dev/null; die "munged failed; see $dir/munge/munged.log"; }

    write_conf "$dir" "$host" "$nodes"
    # N nodes: the bridge first, so that the controller's address there
    # (AccountingStorageHost) is up when slurmctld registers there.
    [ "$nodes" -gt 1 ] && net_up "$dir"
    if [ "$ACCOUNTING" = 1 ]; then
        db_up "$dir" || { cmd_stop "$dir" 2>/dev/null; die "start failed"; }
        dbd_up "$dir" "$host" || { cmd_stop "$dir" 2>/dev/null; die "start failed"; }
    fi

    local logoff=0
    [ -f "$dir/log/slurmctld.log" ] && logoff=$(stat -c %s "$dir/log/slurmctld.log")
    # -c: start with a clean state (no jobs from an earlier run).
    slurmctld -c -f "$dir/slurm.conf" >&2 ||
        { cmd_stop "$dir" 2>/dev/null; die "slurmctld failed; see $dir/log/slurmctld.log"; }
    local want=idle
    if [ "$nodes" -gt 1 ]; then
        mkdir -p "$dir/shared"
        chmod 755 "$dir/shared"
        for ((i = 1; i <= nodes; i++)); do
            node_up "$dir" "node$i" || { cmd_stop "$dir" 2>/dev/null; die "start failed"; }
        done
        want=$(for ((i = 1; i <= nodes; i++)); do printf 'node%d idle\n' "$i"; done)
    else
        slurmd -f "$dir/slurm.conf" >&2 ||
            { cmd_stop "$dir" 2>/dev/null; die "slurmd failed; see $dir/log/slurmd.log"; }
    fi

    st=
    # A slurmctld that died (a fatal error: see its log) makes every sinfo
    # take seconds: stop waiting then.  It writes its pid file just after
    # forking.
    for ((i = 0; i < 50; i++)); do
        [ -s "$dir/run/slurmctld.pid" ] && break
        sleep 0.1
    done
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        pid_of slurmctld "$dir/run/slurmctld.pid" >/dev/null || break
        if [ "$nodes" -gt 1 ]; then
            st=$(SLURM_CONF=$dir/slurm.conf sinfo -h -N -o '%N %t' 2>/dev/null | sort || true)
        else
            st=$(SLURM_CONF=$dir/slurm.conf sinfo -h -n "$host" -o '%t' 2>/dev/null || true)
        fi
        [ "$st" = "$want" ] && break
        sleep 0.1
    done
    # Slurm 22.05 reads batch_sched_delay=0 only on the first scheduler pass,
    # ~3 s after slurmctld starts; jobs submitted before that wait for it.
    # That pass logs "SchedulerParameters=": wait for it, so the cluster is
    # really ready when we return.
    for ((; i < TIMEOUT * 10; i++)); do
        pid_of slurmctld "$dir/run/slurmctld.pid" >/dev/null || break
        tail -c +$((logoff + 1)) "$dir/log/slurmctld.log" 2>/dev/null | grep -q 'SchedulerParameters=' && break
        sleep 0.1
    done
    trap - ERR
    if [ "$st" != "$want" ]; then
        log "nodes not idle after ${TIMEOUT}s (state: ${st:-none}); last log lines:"
        tail -n 5 "$dir/log/slurmctld.log" "$dir"/log/slurmd*.log >&2 2>/dev/null || true
        cmd_stop "$dir" >/dev/null 2>&1 || true
        die "start failed"
    fi
    if ! tail -c +$((logoff + 1)) "$dir/log/slurmctld.log" 2>/dev/null | grep -q 'SchedulerParameters='; then
        log "warning: scheduler has not run yet; the first jobs may wait a few seconds"
    fi
    env_lines "$dir" >"$dir/env.sh"
    log "cluster up in $dir ($nodes node(s) idle) after $((($(date +%s%N) - t0) / 1000000)) ms"
    cat "$dir/env.sh"
}

# ---------------------------------------------------------------- main

[ $# -ge 1 ] || usage
case $1 in
    deps)
        case $# in 1) ;; 2) [ "$2" = accounting ] || usage; ACCOUNTING=1 ;; *) usage ;; esac
        cmd_deps
        ;;
    start) [ $# = 2 ] || [ $# = 3 ] || usage; cmd_start "$2" "${3:-1}" ;;
    kill-node) [ $# = 3 ] || usage; cmd_kill_node "$2" "$3" ;;
    start-node) [ $# = 3 ] || usage; cmd_start_node "$2" "$3" ;;
    stop) [ $# = 2 ] || usage; cmd_stop "$2" ;;
    status) [ $# = 2 ] || usage; cmd_status "$2" ;;
    env) [ $# = 2 ] || usage; [ -f "$2/slurm.conf" ] || die "no cluster in $2"; env_lines "$(cd "$2" && pwd -P)" ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
