#!/usr/bin/env bash
# systemd-check.sh - install bulkdrop under a real systemd (systemd as PID 1, in a podman
# container) by following README.md "## Running under systemd" verbatim, and check that
# config/bulkdrop.service works: start (Type=notify), a drop by a member of `droppers`,
# a clean stop, a crash and its restart, `systemctl restart`, and a configuration error
# that must not restart forever.
#
# Usage: scripts/systemd-check.sh [-w] [-r] [-k] [-n NETWORK] [-h]
#   -w          use the working tree (tracked and untracked, not ignored files) instead
#               of `git archive HEAD` (default: HEAD only, so nobody's uncommitted edits leak in)
#   -r          rebuild the cached base image (debootstrap again)
#   -k          keep the container at the end (`podman exec -it bulkdrop-systemd-check bash`
#               with the CONTAINERS_* variables the script prints); the next run
#               removes it, or remove it yourself with the command printed
#   -n NETWORK  podman network: slirp4netns (default: its own loopback, so ports 8470/8471
#               cannot clash with anything on the host, and internet for pip) or host
#   -h          this help
# Environment:
#   SYSTEMD_CHECK_CACHE  where the base image and podman's state live
#                        (default /var/tmp/bulkdrop-systemd-check; delete it to start cold)
#   SYSTEMD_CHECK_WORKTREE=1  same as -w
#   MIRROR               Debian mirror for debootstrap (default: debootstrap's own)
#
# Needs root. Installs podman, runc, slirp4netns and debootstrap with apt-get when missing.
# The base image (Debian bookworm minbase + systemd, dbus, python3, python3-venv,
# python3-pip, ca-certificates with the host's extra CAs) is built once with debootstrap,
# `podman import`ed and kept; pip inside gets the host's index settings and CA bundle.
# Each run: a new container with /sbin/init (systemd) as PID 1; the project copied to
# /root/bulkdrop; the README block run as root from there with `bash -ex`, up to (not
# including) the `systemctl daemon-reload && systemctl enable --now bulkdrop` line; then
# /etc/bulkdrop/bulkdrop.env pointed at a simulator (`bulkdrop sim --port 8471` as the
# transient unit bulkdrop-sim), test credentials filled in; then the rest of the block,
# except `journalctl -u bulkdrop -f` (it never returns). Then the checks, each PASS/FAIL.
# The container is always removed (trap); the base image stays in the cache.
# Two things differ from podman's defaults so that systemd behaves as on a host: the
# container gets CAP_SYS_ADMIN (else systemd silently skips ProtectSystem= and the other
# namespacing), and / is made rshared before systemd starts (as systemd does itself when
# the kernel starts it; without it LoadCredential= files are unreadable for the service).
#
# Time on this 2-core machine (podman 4.3.1, runc, slirp4netns), measured: cold (no
# cache) 126 s, of which debootstrap 60 s and podman import 9 s; warm 56 s, of which
# `pip install .` ~10 s and the rest mostly the checks' waits (RestartSec=5s, 8 s of
# watching for restarts after the configuration error).
#
# Exit status: 0 every check passed, 1 a check failed, 2 usage or setup error
# (including: the README block cannot be found).
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel 2>/dev/null) || {
  echo "systemd-check: $SCRIPT_DIR is not in a git repository" >&2; exit 2; }

CACHE=${SYSTEMD_CHECK_CACHE:-/var/tmp/bulkdrop-systemd-check}
WORKTREE=${SYSTEMD_CHECK_WORKTREE:-0}
SUITE=bookworm
MIRROR=${MIRROR:-}
# bump the number when the base image recipe (build_base) changes
BASE_TAG=localhost/bulkdrop-systemd-base:$SUITE-1
CNAME=bulkdrop-systemd-check
NETWORK=slirp4netns
REBUILD=0 KEEP=0
SIM_PORT=8471
SPOOL=/var/spool/bulkdrop
PROJECT_DIR=/root/bulkdrop

usage() {
  if [ "${1:-2}" = 0 ]; then sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  else sed -n '/^# Usage:/,/^#   -h/p' "$0" | sed 's/^# \{0,1\}//' >&2; fi
  exit "${1:-2}"
}
while getopts "wrkn:h" opt; do
  case $opt in
    w) WORKTREE=1 ;;  r) REBUILD=1 ;;  k) KEEP=1 ;;  n) NETWORK=$OPTARG ;;
    h) usage 0 ;;  *) usage 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# = 0 ] || usage 2
case $NETWORK in slirp4netns|host) ;; *) echo "systemd-check: -n slirp4netns or host" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "systemd-check: must run as root" >&2; exit 2; }

FAILS=0 PASSES=0
T0=$(date +%s)
log()  { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
pass() { log "PASS  $*"; PASSES=$((PASSES + 1)); }
fail() { log "FAIL  $*"; FAILS=$((FAILS + 1)); }
info() { log "INFO  $*"; }
die()  { log "ERROR $*" >&2; exit 2; }
indent() { sed 's/^/    | /'; }

# ---------------------------------------------------------------- the README block
# The first ```sh fenced block after the heading "## Running under systemd", before the
# next "## " heading. Exit 3 when there is none, 4 when it is not closed.
extract_block() {
  tr -d '\r' | awk '
    /^##[ \t]+Running under systemd[ \t]*$/ { sec = 1; next }
    sec && !blk && /^## / { exit }
    sec && !blk && /^```(sh|bash|shell)[ \t]*$/ { blk = 1; next }
    blk && /^```[ \t]*$/ { closed = 1; exit }
    blk { print }
    END { exit (closed ? 0 : (blk ? 4 : 3)) }'
}
if [ "$WORKTREE" = 1 ]; then
  SOURCE="working tree of $REPO"
  README_TEXT=$(cat "$REPO/README.md") || die "cannot read $REPO/README.md"
else
  SOURCE="git archive HEAD ($(git -C "$REPO" rev-parse --short HEAD)) of $REPO"
  README_TEXT=$(git -C "$REPO" show HEAD:README.md) || die "no README.md in HEAD"
fi
BLOCK=$(printf '%s\n' "$README_TEXT" | extract_block)
case $? in
  0) ;;
  3) die "README.md: no \`\`\`sh block after the heading '## Running under systemd' (heading missing, or no block before the next '## ' heading)" ;;
  4) die "README.md: the \`\`\`sh block under '## Running under systemd' is never closed" ;;
  *) die "README.md: extracting the systemd block failed" ;;
esac
[ -n "${BLOCK//[[:space:]]/}" ] || die "README.md: the block under '## Running under systemd' is empty"
mapfile -t LINES <<< "$BLOCK"
SPLIT=-1
for i in "${!LINES[@]}"; do
  if [[ ${LINES[$i]} =~ systemctl[[:space:]].*enable[[:space:]]+--now[[:space:]]+bulkdrop ]]; then SPLIT=$i; break; fi
done
[ "$SPLIT" -ge 0 ] || die "README.md: no 'systemctl ... enable --now bulkdrop' line in the systemd block"
[ "$SPLIT" -gt 0 ] && [[ ${LINES[$((SPLIT - 1))]} =~ \\[[:space:]]*$ ]] \
  && die "README.md: the line before 'systemctl enable --now' continues onto it; cannot split there"
PART1=() PART2=() DROPPED=()
for i in "${!LINES[@]}"; do
  line=${LINES[$i]}
  if [[ $line =~ ^[[:space:]]*journalctl[[:space:]].*(-f|--follow)([[:space:]]|$) ]]; then
    DROPPED+=("$line")
  elif [ "$i" -lt "$SPLIT" ]; then PART1+=("$line")
  else PART2+=("$line")
  fi
done

# ---------------------------------------------------------------- tools
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v slirp4netns >/dev/null || need+=(slirp4netns)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } \
    > /dev/null || die "apt-get install ${need[*]} failed"
fi

# ---------------------------------------------------------------- podman, all state under $CACHE
mkdir -p "$CACHE" || die "cannot make $CACHE"
exec 9> "$CACHE/lock"
flock -n 9 || die "another systemd-check is running (lock $CACHE/lock)"
NOFILE=$(ulimit -Hn); NPROC=$(ulimit -Hu)
{ [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 16384 ]; } && NOFILE=16384
{ [ "$NPROC" = unlimited ] || [ "$NPROC" -gt 16384 ]; } && NPROC=16384
cat > "$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$CACHE/libpod"
[network]
network_config_dir = "$CACHE/net"
EOF
cat > "$CACHE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$CACHE/run"
EOF
export CONTAINERS_CONF="$CACHE/containers.conf" CONTAINERS_STORAGE_CONF="$CACHE/storage.conf"
# podman still makes these two small dirs; remove them at the end if we made them
CREATED_DIRS=()
for d in /var/lib/containers /run/containers; do [ -e "$d" ] || CREATED_DIRS+=("$d"); done

WORK=$(mktemp -d /tmp/systemd-check.XXXXXX)
STARTED=0 DONE=0
cx()  { podman exec -i "$CNAME" "$@"; }             # a command in the container
cxn() { podman exec "$CNAME" "$@" < /dev/null; }    # ... with no stdin
csh() { podman exec "$CNAME" bash -c "$1" < /dev/null; }

dump_journal() {
  info "journalctl -u bulkdrop (last 60 lines):"
  csh 'journalctl -u bulkdrop --no-pager -n 60 -o short-precise' 2>&1 | indent
  info "journalctl -u bulkdrop-sim (last 10 lines):"
  csh 'journalctl -u bulkdrop-sim --no-pager -n 10 -o short-precise' 2>&1 | indent
  info "systemctl status bulkdrop:"
  csh 'systemctl status bulkdrop --no-pager -l' 2>&1 | head -25 | indent
}
cleanup() {
  local rc=$?
  if [ "$STARTED" = 1 ]; then
    if [ "$FAILS" -gt 0 ] || [ "$DONE" = 0 ]; then dump_journal; fi
    if [ "$KEEP" = 1 ]; then
      info "kept the container: CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF podman exec -it $CNAME bash"
      info "remove it with: CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF podman rm -f -t 0 $CNAME"
    else
      podman rm -f -t 5 "$CNAME" > /dev/null 2>&1
    fi
  fi
  if [ "$KEEP" = 0 ]; then for d in "${CREATED_DIRS[@]}"; do rm -rf "$d"; done; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- the cached base image
build_base() {
  local rootfs=$CACHE/rootfs
  rm -rf "$rootfs"
  log "debootstrap --variant=minbase $SUITE (systemd, dbus, python3, venv, pip; log: $CACHE/debootstrap.log)"
  debootstrap --variant=minbase \
      --include=systemd,systemd-sysv,dbus,procps,ca-certificates,python3,python3-venv,python3-pip \
      "$SUITE" "$rootfs" ${MIRROR:+"$MIRROR"} > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -5 "$CACHE/debootstrap.log"; die "debootstrap failed"; }
  # trust the host's extra CAs, so TLS (pip) inside works wherever it works on the host
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null
  chroot "$rootfs" /bin/sh -c 'update-ca-certificates && apt-get clean && rm -rf /var/lib/apt/lists/*' \
      > "$CACHE/chroot.log" 2>&1 || { tail -5 "$CACHE/chroot.log"; die "update-ca-certificates failed"; }
  # a fresh machine id per container; no console getty in a container
  : > "$rootfs/etc/machine-id"
  ln -sf /dev/null "$rootfs/etc/systemd/system/getty@tty1.service"
  log "podman import -> $BASE_TAG"
  tar --numeric-owner -C "$rootfs" -c . | podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'STOPSIGNAL SIGRTMIN+3' \
      --change 'CMD ["/sbin/init"]' - "$BASE_TAG" > "$CACHE/import.log" 2>&1 \
    || { cat "$CACHE/import.log"; die "podman import failed"; }
  rm -rf "$rootfs"
}
if [ "$REBUILD" = 1 ] || ! podman image exists "$BASE_TAG"; then
  build_base
else
  info "base image $BASE_TAG from the cache ($CACHE)"
fi

# pip in the container: the host's remote index settings (this host's file:// indexes and
# find-links are its own disks, left out) and the system CA bundle, which has the host's CAs
pip_conf() {
  local line key val v out
  declare -A seen=()
  echo "[global]"
  echo "cert = /etc/ssl/certs/ca-certificates.crt"
  seen[cert]=1
  while IFS= read -r line; do
    key=${line%%=*}; key=${key#*.}; val=${line#*=}; val=${val#\'}; val=${val%\'}
    case $key in
      index-url|extra-index-url|trusted-host|proxy|retries) ;;
      timeout|default-timeout) key=timeout ;;
      *) continue ;;
    esac
    out=""
    for v in $val; do case $v in file:*|/*) ;; *) out="$out $v" ;; esac; done
    [ -n "$out" ] && [ -z "${seen[$key]:-}" ] && { echo "$key =$out"; seen[$key]=1; }
  done < <(python3 -m pip config list 2>/dev/null)
  if [ -z "${seen[proxy]:-}" ] && [ -n "${HTTPS_PROXY:-${https_proxy:-}}" ]; then
    echo "proxy = ${HTTPS_PROXY:-${https_proxy:-}}"
  fi
}

# ---------------------------------------------------------------- start systemd as PID 1
podman rm -f -t 0 "$CNAME" > /dev/null 2>&1
log "podman run --systemd=always --network=$NETWORK --cap-add SYS_ADMIN $BASE_TAG sh -c 'mount --make-rshared / && exec /sbin/init'"
# Two things systemd has on a host and not in a podman container:
# - CAP_SYS_ADMIN, to set up the unit's sandbox (ProtectSystem=, PrivateTmp=, mount
#   namespaces, the LoadCredential= mount); podman's default capability set lacks it, and
#   without it systemd silently skips the namespacing, so the check would not test it.
# - shared mount propagation: booted by the kernel, systemd marks / rshared; in a
#   container it leaves that to the container manager, and podman's mounts are private.
#   Then the credentials systemd mounts for a service in a helper namespace never reach
#   the service ("Permission denied: /run/credentials/bulkdrop.service/user_secret").
#   So PID 1 first does what systemd does on a host, then execs systemd.
if ! podman run -d --name "$CNAME" --hostname bulkdrop-check --systemd=always \
     --network="$NETWORK" --cap-add SYS_ADMIN \
     --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC" \
     "$BASE_TAG" /bin/sh -c 'mount --make-rshared / && exec /sbin/init' > "$WORK/run.log" 2>&1 9>&-; then
  cat "$WORK/run.log"; die "podman run failed"
fi
STARTED=1
state=""
for _ in $(seq 1 120); do
  state=$(cxn systemctl is-system-running 2>/dev/null)
  case $state in running|degraded) break ;; esac
  [ "$(podman inspect "$CNAME" --format '{{.State.Running}}' 2>/dev/null)" = true ] || break
  sleep 0.5
done
case $state in
  running) pass "systemd is PID 1 and the system is running" ;;
  degraded) pass "systemd is PID 1 (system degraded: $(cxn systemctl --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' '))" ;;
  *) podman logs "$CNAME" 2>&1 | tail -20 | indent; fail "systemd did not boot (state '${state:-none}')"; exit 1 ;;
esac
[ "$(cxn cat /proc/1/comm)" = systemd ] || { fail "PID 1 is $(cxn cat /proc/1/comm), not systemd"; exit 1; }

pip_conf | cx sh -c 'cat > /etc/pip.conf'
info "pip.conf in the container: $(cxn cat /etc/pip.conf | tr '\n' ' ')"

# ---------------------------------------------------------------- the project
cxn mkdir -p "$PROJECT_DIR"
if [ "$WORKTREE" = 1 ]; then
  (cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -c 2>/dev/null) \
    | cx tar -x -C "$PROJECT_DIR" || die "copying the working tree failed"
else
  git -C "$REPO" archive --format=tar HEAD | cx tar -x -C "$PROJECT_DIR" || die "git archive HEAD failed"
fi
info "project in $PROJECT_DIR: $SOURCE"

# ---------------------------------------------------------------- the README steps
run_part() {  # ID LABEL LINES...: run the lines as a script, as root, from the project dir
  local id=$1 name=$2; shift 2
  printf '%s\n' "$@" > "$WORK/$id.sh"
  bash -n "$WORK/$id.sh" || die "README.md: the $name of the systemd block is not valid shell on its own"
  cx sh -c "mkdir -p /run/systemd-check && cat > /run/systemd-check/$id.sh" < "$WORK/$id.sh" \
    || die "cannot copy the $name into the container"
  log "README block, $name (bash -ex, as root, in $PROJECT_DIR):"
  printf '%s\n' "$@" | sed 's/^/    $ /'
  if podman exec -w "$PROJECT_DIR" "$CNAME" bash -ex "/run/systemd-check/$id.sh" \
       < /dev/null > "$WORK/$id.log" 2>&1; then
    pass "README block, $name: ran to the end (output: $(wc -l < "$WORK/$id.log") lines)"
    return 0
  fi
  tail -40 "$WORK/$id.log" | indent
  fail "README block, $name: stopped at the last '+' line above"
  return 1
}
[ ${#DROPPED[@]} -gt 0 ] && info "left out of the README block (never returns): ${DROPPED[*]}"
run_part part1 "first part" "${PART1[@]}" || exit 1

# between the parts: point the config at a simulator, fill the credentials, start the simulator
log "config for the check: /etc/bulkdrop/bulkdrop.env -> simulator on 127.0.0.1:$SIM_PORT, test credentials"
cx sh -c 'cat > /etc/bulkdrop/bulkdrop.env' <<EOF
# written by scripts/systemd-check.sh
BULKDROP_API_BASE_URL=http://127.0.0.1:$SIM_PORT/elements/api-v2
BULKDROP_SPOOL_SETTLE_SECONDS=0.5
BULKDROP_SPOOL_RESCAN_SECONDS=2
BULKDROP_WORKERS_POLL_INTERVAL_SECONDS=0.5
BULKDROP_WORKERS_POLL_MAX_INTERVAL_SECONDS=2
EOF
csh 'printf "check-user-secret\n" > /etc/bulkdrop/credentials/user_secret &&
     printf "check-element-token\n" > /etc/bulkdrop/credentials/element_token' \
  || die "cannot fill the credential files (did the README steps make them?)"
cxn systemd-run --unit=bulkdrop-sim --quiet /opt/bulkdrop/bin/bulkdrop sim --port "$SIM_PORT" \
  || die "systemd-run bulkdrop-sim failed"
http_ok() { cxn /opt/bulkdrop/bin/python -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" 2>/dev/null; }
ok=0
for _ in $(seq 1 60); do http_ok "http://127.0.0.1:$SIM_PORT/_sim/state" && { ok=1; break; }; sleep 0.5; done
[ $ok = 1 ] || die "the simulator did not answer on 127.0.0.1:$SIM_PORT"
info "simulator running (unit bulkdrop-sim)"

run_part part2 "second part" "${PART2[@]}"
PART2_OK=$?

# ---------------------------------------------------------------- checks
prop() { cxn systemctl show -p "$1" --value bulkdrop; }
is_active() { cxn systemctl is-active bulkdrop; }
wait_active() {  # SECS [OLD_PID]: active, with a MainPID other than OLD_PID
  local end=$(( $(date +%s) + $1 )) pid
  while [ "$(date +%s)" -lt "$end" ]; do
    if [ "$(is_active)" = active ]; then
      pid=$(prop MainPID)
      [ "$pid" != 0 ] && [ "$pid" != "${2:-}" ] && return 0
    fi
    sleep 0.5
  done
  return 1
}
no_permission_denied() {  # WHEN: EACCES and EPERM, as the daemon or Python word them
  local n pat='permission denied|operation not permitted|PermissionError'
  n=$(csh "journalctl -u bulkdrop --no-pager -o cat | grep -ciE '$pat'")
  if [ "${n:-0}" = 0 ]; then pass "no 'Permission denied' (nor EPERM) in journalctl -u bulkdrop ($1)"
  else
    csh "journalctl -u bulkdrop --no-pager -o cat | grep -iE '$pat'" | sort | uniq -c | head -5 | indent
    fail "'Permission denied'/EPERM $n time(s) in journalctl -u bulkdrop ($1)"
  fi
}
drop_and_wait() {  # NAME: alice (umask 022) writes inbox/contact/NAME; it must be done, COMPLETE
  local name=$1 res status="" end mode
  res=$SPOOL/done/contact/$name.result.json
  csh "runuser -u alice -- sh -c 'umask 022 && printf \"email,first_name\\nann@example.com,Ann\\n\" > $SPOOL/inbox/contact/$name'" \
    || { fail "alice cannot write $SPOOL/inbox/contact/$name"; return 1; }
  mode=$(cxn stat -c '%A %U:%G' "$SPOOL/inbox/contact/$name" 2>/dev/null)
  info "alice wrote inbox/contact/$name with umask 022${mode:+ ($mode)}"
  end=$(( $(date +%s) + 60 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    if cxn test -f "$res"; then
      status=$(cxn python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$res")
      break
    fi
    sleep 0.5
  done
  if [ "$status" = COMPLETE ] && cxn test -f "$SPOOL/done/contact/$name"; then
    pass "$name: in done/contact/ with result status COMPLETE"
  else
    csh "find $SPOOL -path '*/.state' -prune -o -print | sort" | indent
    csh "cat $SPOOL/*/contact/$name.result.json 2>/dev/null" | head -20 | indent
    fail "$name: not in done/contact/ with status COMPLETE within 60s (status '${status:-no result}')"
    return 1
  fi
}

# 1. started: active (READY), as bulkdrop
if wait_active 60; then
  pid=$(prop MainPID) n=$(prop NRestarts)
  pass "systemctl is-active bulkdrop: active (Type=notify, READY), MainPID $pid"
  if [ "$n" = 0 ]; then pass "first start without a crash (NRestarts=0)"
  else fail "active only after $n automatic restart(s): the first start(s) crashed (journal below)"; fi
  user=$(cxn stat -c %U "/proc/$pid")
  if [ "$user" = bulkdrop ]; then pass "main process runs as user bulkdrop"
  else fail "main process runs as '$user', not bulkdrop"; fi
else
  fail "bulkdrop not active within 60s (is-active: $(is_active); Result=$(prop Result))"
  exit 1
fi
[ "$PART2_OK" = 0 ] || info "the second part failed, yet the unit is active"
doc=$(prop Documentation)
if cxn test -f "${doc#file://}"; then pass "Documentation= file exists ($doc)"
else fail "Documentation= $doc does not exist"; fi
sa=$(cxn systemd-analyze verify /etc/systemd/system/bulkdrop.service 2>&1)
if [ -z "$sa" ]; then info "systemd-analyze verify bulkdrop.service: no warnings"
else info "systemd-analyze verify bulkdrop.service:"; printf '%s\n' "$sa" | indent; fi
# the sandbox is really in force (as on a host), so the other checks test it
# shellcheck disable=SC2016 # (awk programs in single quotes, run in the container)
mount_opts() { cxn awk -v p="$2" '$5 == p {o = $6} END {print o}' "/proc/$1/mountinfo"; }
# shellcheck disable=SC2016
nnp=$(cxn awk '$1 == "NoNewPrivs:" || $1 == "Seccomp:" {printf "%s%s ", $1, $2}' "/proc/$pid/status")
root_o=$(mount_opts "$pid" /) spool_o=$(mount_opts "$pid" "$SPOOL")
if [[ $root_o == ro* && $spool_o == rw* && $nnp == *NoNewPrivs:1*Seccomp:2* ]]; then
  pass "sandbox in force: / read-only and $SPOOL read-write in the service's mount namespace, ${nnp% }"
else
  fail "sandbox not in force: / '${root_o:-?}', $SPOOL '${spool_o:-not a mount}', $nnp"
fi

# 2. config readable, secrets through LoadCredential= accepted by the simulator
no_permission_denied "after the first start"
ok=0
for _ in $(seq 1 60); do http_ok http://127.0.0.1:8470/readyz && { ok=1; break; }; sleep 0.5; done
if [ $ok = 1 ]; then pass "GET 127.0.0.1:8470/readyz: 200 (API reachable, credentials from LoadCredential= accepted)"
else fail "GET 127.0.0.1:8470/readyz not 200 within 30s"; fi

# 3. a dropper with the bad umask
csh 'useradd -m -G droppers alice' || fail "useradd -m -G droppers alice"
if cxn test -d "$SPOOL/inbox/contact"; then
  pass "the daemon made inbox/contact/ ($(cxn stat -c '%A %U:%G' "$SPOOL/inbox/contact"))"
else
  fail "no $SPOOL/inbox/contact/ after start"
fi
drop_and_wait alice-1.csv
# processing/<node>/ is the daemon's alone (a dropper there could swap a claimed file)
node_dir=$(cxn find "$SPOOL/processing" -mindepth 1 -maxdepth 1 -type d | head -n 1)
node_mode=$(cxn stat -c '%A %U:%G' "$node_dir" 2>/dev/null)
case "$node_mode" in
  ?????w*|????????w*|'') fail "processing/<node>/ writable by others: ${node_mode:-missing}" ;;
  *) pass "processing/<node>/ is the daemon's alone ($node_mode)" ;;
esac

# 4. the ledger in StateDirectory=, not in the spool
inspool=$(cxn find "$SPOOL" -name 'bulkdrop.db*')
if cxn test -f /var/lib/bulkdrop/bulkdrop.db && [ -z "$inspool" ]; then
  pass "ledger is /var/lib/bulkdrop/bulkdrop.db ($(cxn stat -c '%U:%G' /var/lib/bulkdrop/bulkdrop.db)), none under $SPOOL"
else
  fail "ledger: /var/lib/bulkdrop/bulkdrop.db $(cxn test -f /var/lib/bulkdrop/bulkdrop.db && echo exists || echo missing); under the spool: ${inspool:-none}"
fi

# 5. a clean stop
t=$(date +%s)
cxn systemctl stop bulkdrop
res=$(prop Result) st=$(is_active) code=$(prop ExecMainStatus)
if [ "$res" = success ] && [ "$st" = inactive ]; then
  pass "systemctl stop: Result=success, inactive, exit status $code, in $(( $(date +%s) - t ))s"
else
  fail "systemctl stop: Result=$res, $st, exit status $code"
fi

# 6. a crash restarts (Restart=on-failure, RestartSec=5s)
cxn systemctl start bulkdrop
if wait_active 60; then
  pid=$(prop MainPID) n0=$(prop NRestarts)
  pass "systemctl start: active again, MainPID $pid"
  cxn systemctl kill -s SIGKILL bulkdrop
  t=$(date +%s)
  if wait_active 30 "$pid"; then
    pass "after SIGKILL: active again in $(( $(date +%s) - t ))s, MainPID $pid -> $(prop MainPID), NRestarts $n0 -> $(prop NRestarts)"
  else
    fail "after SIGKILL: not active with a new MainPID within 30s ($(is_active), Result=$(prop Result))"
  fi
else
  fail "systemctl start after the stop: not active within 60s ($(is_active))"
fi

# 7. systemctl restart, and a drop after it
pid=$(prop MainPID)
if cxn systemctl restart bulkdrop && wait_active 60 "$pid"; then
  pass "systemctl restart: active, MainPID $pid -> $(prop MainPID)"
else
  fail "systemctl restart: $(is_active), Result=$(prop Result)"
fi
drop_and_wait alice-2.csv

# 8. a configuration error stops the unit for good (exit 2, RestartPreventExitStatus=2)
cxn cp -p /etc/bulkdrop/bulkdrop.env /run/systemd-check/bulkdrop.env.good
csh 'echo BULKDROP_WORKERS_UPLOADS=many >> /etc/bulkdrop/bulkdrop.env'
cxn systemctl restart bulkdrop > "$WORK/bad-restart.log" 2>&1
rc=$?
n0=$(prop NRestarts) states="" n1=$n0 restarted=0
for _ in $(seq 1 8); do
  sleep 1
  s=$(is_active) n1=$(prop NRestarts)
  states="$states $s"
  case $s in failed|inactive) ;; *) restarted=1 ;; esac
  [ "$n1" = "$n0" ] || restarted=1
done
code=$(prop ExecMainStatus) res=$(prop Result)
if [ "$rc" != 0 ] && [ "$code" = 2 ] && [ "$restarted" = 0 ]; then
  pass "config error (BULKDROP_WORKERS_UPLOADS=many): exit status 2, Result=$res, no restart over 8s (states:$states; NRestarts $n0 -> $n1)"
else
  fail "config error: systemctl restart rc=$rc, exit status $code, Result=$res, states over 8s:$states, NRestarts $n0 -> $n1"
fi
if csh 'journalctl -u bulkdrop --no-pager -o cat -n 30 | grep -q "workers.uploads"'; then
  pass "the configuration error in the journal names the key (workers.uploads)"
else
  fail "no message naming workers.uploads in the journal"
fi
cxn cp -p /run/systemd-check/bulkdrop.env.good /etc/bulkdrop/bulkdrop.env
cxn systemctl reset-failed bulkdrop
if cxn systemctl start bulkdrop && wait_active 60; then
  pass "env restored: systemctl start -> active, MainPID $(prop MainPID)"
else
  fail "env restored: not active again ($(is_active))"
fi
no_permission_denied "whole run"

DONE=1
log "done: $PASSES passed, $FAILS failed ($SOURCE)"
[ "$FAILS" = 0 ]
