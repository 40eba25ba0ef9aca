#!/usr/bin/env bash
# Sequential 1 GiB write/read through reseedfs vs the same kind of volume directly, in one
# run. Needs root, fio, loop devices. Usage: benches/seq_compare.sh [COPIES] (default 2).
# Builds three 3 GiB ext4 volumes on loop devices attached with --direct-io=on (so O_DIRECT
# reaches the disk, not the host page cache), mounts reseedfs over them, runs fio against
# Volume3 (the spare, so direct) and against the mount, dropping caches before each job.
set -uo pipefail
copies=${1:-2}
bin=${RESEEDFS_BIN:-$(dirname "$0")/../target/release/reseedfs}
root=$(mktemp -d /tmp/reseedfs-seq.XXXXXX)
cleanup() {
    "$bin" unmount --config "$root/c.toml" >/dev/null 2>&1
    sleep 0.5
    umount -l "$root/dbs" 2>/dev/null
    for k in 1 2 3; do
        umount "$root/vols/Volume$k" 2>/dev/null
        dev=$(losetup -j "$root/img$k" | cut -d: -f1)
        [ -n "$dev" ] && losetup -d "$dev"
    done
    rm -rf "$root"
}
trap cleanup EXIT
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v fio >/dev/null || { echo "needs fio (apt-get install fio)" >&2; exit 1; }
mkdir -p "$root/vols" "$root/dbs"
for k in 1 2 3; do
    truncate -s 3G "$root/img$k"
    dev=$(losetup -f --show --direct-io=on "$root/img$k")
    mkfs.ext4 -q -F "$dev"
    mkdir -p "$root/vols/Volume$k"
    mount "$dev" "$root/vols/Volume$k"
done
"$bin" init --volumes "$root/vols" --databases "$root/dbs" --database db001 --copies "$copies" \
    --config "$root/c.toml" --state-dir "$root/state" --witness-dir "$root/witness" >/dev/null 2>&1 \
    || { echo "reseedfs init failed" >&2; exit 1; }
("$bin" mount --config "$root/c.toml" >"$root/mount.log" 2>&1 &)
for _ in $(seq 100); do grep -q " $root/dbs fuse.reseedfs" /proc/mounts && break; sleep 0.1; done
job() { # label file rw direct
    echo 3 >/proc/sys/vm/drop_caches
    fio --name=x --filename="$2" --rw="$3" --bs=1M --size=1G --ioengine=psync --direct="$4" \
        --end_fsync=1 --output-format=json >"$root/fio.json" 2>"$root/fio.err" \
        || { echo "$1: fio failed: $(cat "$root/fio.err")"; return; }
    python3 -c "import json; j=json.load(open('$root/fio.json'))['jobs'][0]; \
print('%-34s %8.1f MiB/s' % ('$1', max(j['write']['bw'], j['read']['bw']) / 1024))"
}
for direct in 1 0; do
    job "direct   write O_DIRECT=$direct" "$root/vols/Volume3/t" write $direct
    job "reseedfs write O_DIRECT=$direct ($copies cp)" "$root/dbs/db001/db001.db/t" write $direct
    job "direct   read  O_DIRECT=$direct" "$root/vols/Volume3/t" read $direct
    job "reseedfs read  O_DIRECT=$direct ($copies cp)" "$root/dbs/db001/db001.db/t" read $direct
    rm -f "$root/vols/Volume3/t" "$root/dbs/db001/db001.db/t"
done
