# shellcheck shell=bash
# Installing Debian packages the project needs: one place for every make target and script.
#
#   apt_install PKG...            install what is missing; fail with what to do when that cannot be done
#   apt_install --optional PKG... the same, but only warn (callers then skip what needs them)
#   apt_install --lists           only make sure apt's package lists exist (for `apt-get download`)
#
# Root runs apt-get itself; another user goes through sudo when it has one. On a machine
# without apt-get (not Debian/Ubuntu) the message names the packages to install by hand.

_apt_log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# apt_missing PKG...: print the packages that are not installed (all of them where there is no dpkg)
apt_missing() {
  local p
  command -v dpkg-query >/dev/null 2>&1 || { printf '%s\n' "$@"; return 0; }
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

# apt_lists [sudo]: a machine that never ran 'apt-get update' has no package lists: fetch them once
apt_lists() {
  ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || return 1
  "$@" apt-get update -q >/dev/null
}

apt_install() {
  local optional=0
  if [ "${1:-}" = "--optional" ]; then optional=1; shift; fi
  if [ "${1:-}" = "--lists" ]; then
    local -a as_root=()
    [ "$(id -u)" -eq 0 ] || ! command -v sudo >/dev/null 2>&1 || as_root=(sudo)
    apt_lists "${as_root[@]}" && return 0
    _apt_log "ERROR: apt has no package lists and could not fetch them: run 'apt-get update' as root once"
    return 1
  fi
  local missing
  mapfile -t missing < <(apt_missing "$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  local fail=""
  local -a sudo=()
  if ! command -v apt-get >/dev/null 2>&1; then
    fail="this is not a Debian/Ubuntu machine (no apt-get): install the equivalent of '${missing[*]}' yourself"
  elif [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      fail="installing '${missing[*]}' needs root: run 'apt-get install ${missing[*]}' as root, then this again"
    fi
  fi
  if [ -z "$fail" ]; then
    _apt_log "apt-get install ${missing[*]}"
    apt_lists "${sudo[@]}" || true
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" >/dev/null; then
      # stale lists (a package moved to a new version): refresh once and try again
      "${sudo[@]}" apt-get update -q >/dev/null || true
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null || fail="apt-get could not install '${missing[*]}' (see its message above)"
    fi
  fi
  [ -z "$fail" ] && return 0
  if [ "$optional" = 1 ]; then
    _apt_log "WARNING: $fail; what needs them is skipped"
    return 0
  fi
  _apt_log "ERROR: $fail"
  return 1
}
