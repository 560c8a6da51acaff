#!/usr/bin/env bash
# Installs the Debian packages the test suite drives: real NBD clients (libnbd-bin: nbdinfo,
# nbdcopy, nbdfuse), nbdkit as the benchmark reference, qemu-img/qemu-io, fio, FUSE and the
# ext4/loop tools. Runs as root, or through sudo when it is there. Safe to run again.
set -euo pipefail

packages=(libnbd-bin nbdkit qemu-utils fio fuse3 e2fsprogs util-linux g++ make python3)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system-packages: all present (${packages[*]})"
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-system-packages: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
echo "install-system-packages: installing ${missing[*]}"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
