# shellcheck shell=bash
# Installing Debian packages the project needs: one place for every make target and script.
#
#   apt_install PKG...            install what is missing; fail with what to do when that cannot be done
#   apt_install --optional PKG... the same, but only warn (callers then skip what needs them)
#
# Root runs apt-get itself; another user goes through sudo when it has one. On a machine
# without apt-get (not Debian/Ubuntu) the message names the packages to install by hand.

_apt_log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# apt_missing PKG...: print the packages that are not installed (nothing when dpkg is absent)
apt_missing() {
  local p
  command -v dpkg-query >/dev/null 2>&1 || { printf '%s\n' "$@"; return 0; }
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

apt_install() {
  local optional=0
  if [ "${1:-}" = "--optional" ]; then optional=1; shift; fi
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
    # A machine that never ran 'apt-get update' has no package lists yet: update first then.
    if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
      "${sudo[@]}" apt-get update -q >/dev/null || true
    fi
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
