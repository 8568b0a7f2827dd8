# shellcheck shell=bash
# A Debian bookworm minbase root filesystem, made once with debootstrap and kept as a tarball:
# the images' base layer (hack/images/build.sh) and the fresh-machine check (hack/fresh/check.sh).
# Needs apt_install, log and die (hack/cluster/lib.sh).

# rootfs_tarball TAR DEBS: make TAR (with packages DEBS, comma-separated) unless it is there
# with the same packages; debootstrap's log goes to TAR.log
rootfs_tarball() {
  local tar=$1 debs=$2 mirror tmp t
  if [ -f "$tar" ] && [ "$(cat "$tar.pkgs" 2>/dev/null)" = "$debs" ]; then return 0; fi
  apt_install debootstrap
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
  tmp="$tar.tmp"
  rm -rf "$tmp"
  log "debootstrap --variant=minbase --include=$debs bookworm from $mirror"
  t=$(date +%s)
  debootstrap --variant=minbase --include="$debs" bookworm "$tmp" "$mirror" >"$tar.log" 2>&1 \
    || { tail -20 "$tar.log" >&2; die "debootstrap failed (log: $tar.log)"; }
  tar --numeric-owner -C "$tmp" -cf "$tar.new" .
  mv "$tar.new" "$tar"
  echo "$debs" > "$tar.pkgs"
  rm -rf "$tmp"
  log "rootfs cached in $tar ($(( $(date +%s) - t ))s)"
}
