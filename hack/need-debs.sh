#!/usr/bin/env bash
# `bash hack/need-debs.sh [--optional] PKG...`: install the Debian packages a make target needs
# (hack/lib/apt.sh says how, and what it prints when it cannot).
set -euo pipefail
# shellcheck source=hack/lib/apt.sh
. "${BASH_SOURCE[0]%/*}/lib/apt.sh"
apt_install "$@"
