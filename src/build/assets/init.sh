#!/bin/sh
# abforge initramfs /init (busybox sh). Procedure: src/build/README.md,
# "initramfs /init". Any failure prints one `abforge-initramfs: ...` line and
# panics the kernel, so `panic=N` resets the machine and GRUB counts the try.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

NEWROOT=/newroot
STATE="$NEWROOT/run/state"
WAIT_TENTHS=300 # 30 s for the disk to appear

say() {
  echo "abforge-initramfs: $*"
}

fail() {
  say "$*"
  say "giving up: kernel panic"
  sync
  # Only as PID 1: a test that sources this file must never crash its host.
  [ "$$" = 1 ] && echo c >/proc/sysrq-trigger 2>/dev/null
  # No /proc (or sysrq refused): init exiting panics the kernel just as well.
  exit 1
}

# Step 2: abforge.slot=, abforge.roothash=, abforge.verity=, abforge.version=.
parse_cmdline() {
  slot="" roothash="" verity="" version=""
  for arg in $1; do
    case "$arg" in
    abforge.slot=*) slot="${arg#abforge.slot=}" ;;
    abforge.roothash=*) roothash="${arg#abforge.roothash=}" ;;
    abforge.verity=*) verity="${arg#abforge.verity=}" ;;
    abforge.version=*) version="${arg#abforge.version=}" ;;
    esac
  done
  case "$slot" in
  A | B) ;;
  *) fail "abforge.slot=\"$slot\" on the kernel command line: expected A or B" ;;
  esac
  case "$roothash" in
  "" | *[!0-9a-f]*) fail "abforge.roothash=\"$roothash\": expected lowercase hex" ;;
  esac
  old_ifs=$IFS
  IFS=:
  # shellcheck disable=SC2086
  set -- $verity
  IFS=$old_ifs
  data_blocks=$1 hash_start=$2 salt=${3:-}
  case "$data_blocks:$hash_start" in
  *[!0-9:]* | :* | *:) fail "abforge.verity=\"$verity\": expected <dataBlocks>:<hashStartBlock>:<salt>" ;;
  esac
  [ "$#" -le 3 ] || fail "abforge.verity=\"$verity\": expected <dataBlocks>:<hashStartBlock>:<salt>"
  case "$salt" in
  *[!0-9a-f]*) fail "abforge.verity=\"$verity\": the salt must be lowercase hex" ;;
  esac
  [ -n "$salt" ] || salt=-
}

# A partition's device name by its GPT name (PARTNAME in its uevent), among
# the partitions under the sysfs directory $2 (every block device if empty).
find_part() {
  for u in ${2:-/sys/class/block}/*/uevent; do
    [ -f "$u" ] || continue
    if grep -qx "PARTNAME=$1" "$u"; then
      sed -n 's/^DEVNAME=//p' "$u"
      return 0
    fi
  done
  return 1
}

# Step 4: wait (bounded) for partition $1 to appear.
wait_part() {
  i=0
  while [ "$i" -lt "$WAIT_TENTHS" ]; do
    dev=$(find_part "$@") && [ -n "$dev" ] && [ -b "/dev/$dev" ] && {
      echo "$dev"
      return 0
    }
    sleep 0.1
    i=$((i + 1))
  done
  return 1
}

main() {
  # Step 1: the API filesystems.
  mkdir -p /proc /sys /dev
  mount -t proc -o nosuid,nodev,noexec proc /proc || fail "cannot mount /proc"
  mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || fail "cannot mount /sys"
  mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev || fail "cannot mount devtmpfs on /dev"

  parse_cmdline "$(cat /proc/cmdline)"
  say "slot $slot version ${version:-?} roothash $roothash"

  # Step 3: modules, dependencies first (the order was resolved at build time).
  while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod" || fail "insmod $mod failed"
  done </etc/abforge-modules

  # Step 4: the slot's partition, and the state partition of the same disk.
  part=$(wait_part "abforge-$slot") || fail "no partition named abforge-$slot appeared within $((WAIT_TENTHS / 10)) s"
  disk_sys=$(dirname "$(readlink -f "/sys/class/block/$part")")
  state_part=$(wait_part state "$disk_sys") || fail "no partition named state next to /dev/$part"

  # Step 5: dm-verity over the slot: data from byte 0, tree in the same partition.
  sectors=$((data_blocks * 8))
  dmsetup create --noudevsync --readonly abforge-root --table \
    "0 $sectors verity 1 /dev/$part /dev/$part 4096 4096 $data_blocks $hash_start sha256 $roothash $salt 1 restart_on_corruption" ||
    fail "dm-verity over /dev/$part failed (table: $data_blocks data blocks, hash start $hash_start)"
  dmsetup mknodes || fail "dmsetup mknodes failed"
  [ -b /dev/mapper/abforge-root ] || fail "/dev/mapper/abforge-root missing after dmsetup mknodes"

  # Step 6: the read-only root.
  mkdir -p "$NEWROOT"
  mount -t squashfs -o ro /dev/mapper/abforge-root "$NEWROOT" ||
    fail "cannot mount the verity root /dev/mapper/abforge-root (squashfs) of slot $slot"
  for d in run var etc proc sys dev; do
    [ -d "$NEWROOT/$d" ] || fail "the root filesystem of slot $slot has no /$d mount point"
  done
  [ -x "$NEWROOT/sbin/init" ] || [ -L "$NEWROOT/sbin/init" ] || fail "slot $slot has no /sbin/init"

  # Step 7: the state partition at /run/state; /var and the /etc overlay on it.
  mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs "$NEWROOT/run" || fail "cannot mount /run"
  mkdir -p "$STATE"
  mount -t ext4 -o rw,noatime "/dev/$state_part" "$STATE" ||
    fail "cannot mount the state partition /dev/$state_part (ext4)"
  mkdir -p "$STATE/var" "$STATE/etc-overlay/upper" "$STATE/etc-overlay/work" ||
    fail "cannot create directories on the state partition"
  mount --bind "$STATE/var" "$NEWROOT/var" || fail "cannot bind the state partition's var on /var"
  mount -t overlay -o "lowerdir=$NEWROOT/etc,upperdir=$STATE/etc-overlay/upper,workdir=$STATE/etc-overlay/work" \
    overlay "$NEWROOT/etc" || fail "cannot mount the /etc overlay"

  # Step 8: hand over.
  mount --move /dev "$NEWROOT/dev" || fail "cannot move /dev"
  mount --move /sys "$NEWROOT/sys" || fail "cannot move /sys"
  mount --move /proc "$NEWROOT/proc" || fail "cannot move /proc"
  exec switch_root "$NEWROOT" /sbin/init
  # Not reached: a failed exec ends this shell, and the kernel panics.
}

# Run only as the kernel's init; tests source this file for its functions.
case "$0" in
/init | init) main ;;
esac
