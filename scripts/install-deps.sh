#!/usr/bin/env bash
# Installs the Debian 12 packages that kleap needs to build, test and run its demo.
set -euo pipefail
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps.sh: run as root (apt-get install needs it)" >&2
  exit 77
fi
packages=(
  build-essential cmake ninja-build pkg-config git
  gcc-multilib g++-multilib
  protobuf-compiler libprotobuf-dev
  libcap-dev libxxhash-dev libsystemd-dev dbus libglib2.0-bin
  libgtest-dev
  clang-format
  procps psmisc jq
  qemu-system-x86 busybox-static cpio xz-utils
  polkitd
  libnl-3-dev libnl-route-3-dev libnftables-dev nftables iproute2
)
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all build dependencies present"
fi
