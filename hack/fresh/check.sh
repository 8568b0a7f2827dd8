#!/usr/bin/env bash
# The README's promise, checked: on a fresh Debian 12 root filesystem with nothing but what the
# README lists (Python 3.11, make, git, apt-get), a clone of this repository runs `make run`
# (no microphone there: the sample path) and `make test` to green, and, with --e2e, `make e2e`.
#
#   bash hack/fresh/check.sh [--e2e | --steps LIST] [--worktree] [--keep]
#     --e2e       also run `make e2e` inside (builds Kubernetes from source, images, the cluster; ~30 min)
#     --steps     the make targets to run, in order, comma-separated (default: run,test; --e2e adds e2e)
#     --worktree  copy the working tree (tracked and untracked files) instead of cloning HEAD
#     --keep      leave the fresh machine running afterwards (for a look inside)
#
# The root filesystem comes from debootstrap (minbase, cached as a tarball) and is laid anew on
# every run. It is the root of a mount namespace of its own and shares this machine's kernel,
# processes and network; it takes only this machine's way of
# reaching the package registries (its apt sources, DNS, CA certificates, pip's certificate
# setting): no package, cache or model is carried in. Durations and results are printed and
# written to $STT_FRESH_DIR/result.txt; logs to $STT_FRESH_DIR/logs/.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=hack/cluster/lib.sh
. "$HERE/../cluster/lib.sh"
STEPS="run,test" WORKTREE=0 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --e2e) STEPS="run,test,e2e" ;;
    --steps) STEPS="${2:?--steps needs a list, e.g. run,test,e2e}"; shift ;;
    --worktree) WORKTREE=1 ;;
    --keep) KEEP=1 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
  shift
done
E2E=0
case ",$STEPS," in *,e2e,*) E2E=1 ;; esac
[ "$(id -u)" -eq 0 ] || die "the fresh-machine check needs root (debootstrap, chroot, mounts)"
FRESH="${STT_FRESH_DIR:-/var/tmp/stt-fresh}"
ROOT="$FRESH/root"
LOGS="$FRESH/logs"
# What the README asks a newcomer to have; everything else must come from the make targets.
DEBS="python3,make,git"
TAR="$FRESH/rootfs-bookworm-minbase-fresh.tar"

HOLDER_FILE="$FRESH/machine.pid"

machine_pid() { # the process holding the fresh machine's mount namespace, if it runs
  local pid
  pid=$(cat "$HOLDER_FILE" 2>/dev/null) || return 1
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q '^sleep infinity' && echo "$pid"
}
inroot_pids() { # PIDs of processes in the fresh machine's mount namespace
  local holder ns p
  holder=$(machine_pid) || return 0
  ns=$(readlink "/proc/$holder/ns/mnt")
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
  done
  return 0
}
inroot() { # a login-like, empty environment: nothing from this shell leaks in but pip's CA setting
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
    ${PIP_CERT:+PIP_CERT=/etc/ssl/certs/ca-certificates.crt} \
    nsenter --target "$(machine_pid)" --mount --root --wd -- bash -c "cd /src/stt && $1"
}
start_machine() {
  # A private mount namespace whose root *is* the fresh root filesystem (pivot_root, not chroot):
  # runc, which kubectl exec goes through, finds a container's root from its namespace's root,
  # so under a mere chroot every exec into a pod fails. Mounts made in there (the cluster's
  # included) vanish with the namespace; this machine's own mount table is never touched.
  unshare --mount --propagation private -- bash -c '
    set -e
    r=$1
    mount --bind "$r" "$r"
    mount -t proc proc "$r/proc"
    mount --rbind /sys "$r/sys"
    mount --rbind /dev "$r/dev"
    mount -t tmpfs tmpfs "$r/run"
    cd "$r"
    mkdir -p .host
    pivot_root . .host
    cd /
    umount -l /.host
    rmdir /.host
    exec sleep infinity' machine "$ROOT" >"$LOGS/machine.log" 2>&1 &
  echo $! > "$HOLDER_FILE"
  local i
  for ((i = 0; i < 50; i++)); do
    if machine_pid >/dev/null && inroot "test ! -e /.host" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  cat "$LOGS/machine.log" >&2
  die "the fresh machine's namespace did not come up"
}

teardown() {
  machine_pid >/dev/null || return 0
  # the cluster (with make e2e) first, while its daemons still run: it stops the pods (which
  # live in namespaces of their own), links and iptables chains that it made
  if [ "$E2E" = 1 ] && [ -f "$ROOT/src/stt/hack/cluster/down.sh" ]; then
    inroot "bash hack/cluster/down.sh" >/dev/null 2>&1 || true
  fi
  local pids
  pids=$(inroot_pids)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill $pids 2>/dev/null || true
  sleep 2
  pids=$(inroot_pids)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
  rm -f "$HOLDER_FILE"
}
trap teardown EXIT

mkdir -p "$FRESH" "$LOGS"
rootfs_tarball "$TAR" "$DEBS"

teardown
# never delete through a mount that is still there (it would reach this machine's /dev or /sys)
if awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 {found = 1} END {exit !found}' /proc/self/mounts; then
  die "$ROOT still has mounts; unmount them first (umount -R $ROOT)"
fi
rm -rf --one-file-system "$ROOT"
mkdir -p "$ROOT"
tar --numeric-owner -C "$ROOT" -xf "$TAR"
# how this machine reaches the registries: DNS, apt sources, CA certificates (nothing else)
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/hosts "$ROOT/etc/hosts"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$ROOT/etc/apt/sources.list.d/"
  rm -f "$ROOT/etc/apt/sources.list"
fi
mkdir -p "$ROOT/usr/local/share/ca-certificates" "$ROOT/etc/ssl/certs"
cp -r /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
# the package lists debootstrap leaves are its own: a new machine starts without them
rm -rf "$ROOT"/var/lib/apt/lists/*
mkdir -p "$ROOT/var/lib/apt/lists/partial"

if [ "$WORKTREE" = 1 ]; then
  mkdir -p "$ROOT/src/stt"
  (cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$ROOT/src/stt/")
  git -C "$ROOT/src/stt" init -q && git -C "$ROOT/src/stt" add -A \
    && git -C "$ROOT/src/stt" -c user.name=check -c user.email=check@localhost commit -qm worktree
  SOURCE="the working tree of $REPO"
else
  git clone -q --no-local "$REPO" "$ROOT/src/stt"
  SOURCE="a clone of $REPO at $(git -C "$REPO" rev-parse --short HEAD)"
fi

start_machine

RESULT="$FRESH/result.txt"
{
  echo "fresh-machine check, $(date -u +%Y-%m-%dT%H:%MZ): Debian $(cat "$ROOT/etc/debian_version") minbase + $DEBS"
  echo "source: $SOURCE"
} > "$RESULT"
status=0
step() { # name timeout-seconds command
  local name=$1 limit=$2 cmd=$3 t rc
  log "fresh machine: $cmd (log: $LOGS/$name.log)"
  t=$(date +%s)
  set +e
  inroot "timeout $limit $cmd" </dev/null >"$LOGS/$name.log" 2>&1
  rc=$?
  set -e
  local took=$(( $(date +%s) - t ))
  local summary
  # pytest's closing line, or the client's "-- done: N chunks ..." line
  summary=$(grep -E '[0-9]+ (passed|failed)|^-- done:' "$LOGS/$name.log" | tail -1 | sed 's/=//g; s/^ *//' || true)
  if [ "$rc" -eq 0 ]; then
    echo "PASS  $cmd  (${took}s) ${summary}" | tee -a "$RESULT"
  else
    echo "FAIL  $cmd  (${took}s, exit $rc) ${summary}" | tee -a "$RESULT"
    tail -30 "$LOGS/$name.log" | sed 's/^/    /' >&2
    status=1
  fi
}
IFS=, read -ra targets <<< "$STEPS"
for target in "${targets[@]}"; do
  case "$target" in
    run) step run 2400 "make run" ;;
    test) step test 3600 "make test" ;;
    e2e) step e2e 4800 "make e2e" ;;
    *) die "unknown step $target (run, test or e2e)" ;;
  esac
done
cat "$RESULT"
if [ "$KEEP" = 1 ]; then
  trap - EXIT
  log "left running: enter with 'nsenter -t $(machine_pid) -m -r -w bash'; end with 'kill $(machine_pid)'"
fi
exit $status
