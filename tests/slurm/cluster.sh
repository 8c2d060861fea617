#!/usr/bin/env bash
# A real SLURM cluster for the tests: Debian's slurm and munge packages, two fake GPUs a node. The workflow's jobs
# run on one node (partition main); partition multi adds a second node, a second slurmd on the same machine
# (its own name and port), for jobs that span two nodes.
#   tests/slurm/cluster.sh start   installs (once), configures, starts munge/slurmctld/slurmds, waits for idle
#   tests/slurm/cluster.sh stop    stops the daemons and removes the config
# State, spool, logs and config live under $SLURM_TEST_DIR (default /tmp/clipflow-slurm). Needs root.
set -euo pipefail
DIR=${SLURM_TEST_DIR:-/tmp/clipflow-slurm}

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    mkdir -p "$DIR"/{state,log,run} "$DIR/spool/$(hostname -s)" "$DIR/spool/$(hostname -s)-2" /etc/slurm
    : > "$DIR/gpu0"; : > "$DIR/gpu1"   # slurmd accepts plain files as GPU devices (logs that they are not char devices)
    : > "$DIR/gpu2"; : > "$DIR/gpu3"
    local node host second
    node=$(slurmd -C | head -1 | sed 's/ UpTime=.*//')
    host=$(hostname -s)
    second=${node/NodeName=$host/NodeName=$host-2 NodeHostname=$host Port=6819}
    cat > /etc/slurm/slurm.conf <<CONF
ClusterName=clipflow-test
SlurmctldHost=$(hostname -s)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
GresTypes=gpu
MinJobAge=7200
StateSaveLocation=$DIR/state
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
$node Port=6818 Gres=gpu:2 State=UNKNOWN
$second Gres=gpu:2 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=multi Nodes=$host,$host-2 MaxTime=INFINITE State=UP
CONF
    printf 'NodeName=%s Name=gpu File=%s/gpu[0-1]\nNodeName=%s-2 Name=gpu File=%s/gpu[2-3]\n' \
        "$host" "$DIR" "$host" "$DIR" > /etc/slurm/gres.conf
}

start() {
    install_packages
    stop 2>/dev/null || true
    write_config
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
    chmod 0400 /etc/munge/munge.key
    su -s /bin/sh munge -c munged
    slurmctld
    slurmd -N "$(hostname -s)"
    slurmd -N "$(hostname -s)-2"
    for _ in $(seq 60); do
        if [ "$(sinfo -h -N -p multi -o %t 2>/dev/null | grep -cx idle)" = 2 ]; then
            sinfo
            return 0
        fi
        sleep 1
    done
    echo "the SLURM nodes did not become idle; see $DIR/log" >&2
    tail -n 20 "$DIR"/log/*.log >&2
    return 1
}

stop() {
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x munged || true
    sleep 1
    # Without a controller, a config makes every `scontrol show config` wait ~9 s, and Snakemake's SLURM
    # executor plugin runs one at import, so every later `snakemake` call here would pay it.
    rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
}

"${1:?usage: cluster.sh start|stop}"
