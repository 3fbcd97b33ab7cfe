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

# Step 2: abforge.slot=, abforge.roothash=, abforge.verity=, abforge.version=,
# abforge.boottoken=.
parse_cmdline() {
  slot="" roothash="" verity="" version="" boot_token=""
  for arg in $1; do
    case "$arg" in
    abforge.slot=*) slot="${arg#abforge.slot=}" ;;
    abforge.roothash=*) roothash="${arg#abforge.roothash=}" ;;
    abforge.verity=*) verity="${arg#abforge.verity=}" ;;
    abforge.version=*) version="${arg#abforge.version=}" ;;
    abforge.boottoken=*) boot_token="${arg#abforge.boottoken=}" ;;
    esac
  done
  case "$slot" in
  A | B) ;;
  *) fail "abforge.slot=\"$slot\" on the kernel command line: expected A or B" ;;
  esac
  case "$boot_token" in
  "" | [0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]) ;;
  *) fail "abforge.boottoken=\"$boot_token\": expected 14 digits (YYYYMMDDhhmmss) or nothing" ;;
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

# The little-endian unsigned integer of $3 bytes at byte $2 of file $1.
le_uint() {
  le_v=0 le_k=0
  for le_b in $(dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | od -An -tu1 -v); do
    le_v=$((le_v | (le_b << (8 * le_k))))
    le_k=$((le_k + 1))
  done
  [ "$le_k" = "$3" ] || return 1
  echo "$le_v"
}

# The byte offset of the 1024-byte /GRUBENV in the FAT32 file system on $1
# (src/bootloader/README.md, "Finding /GRUBENV in the FAT", steps 1-4, in the
# root directory's first cluster, where the build puts it first); fails when
# there is none.
grubenv_offset() {
  [ "$(le_uint "$1" 510 2)" = 43605 ] || return 1 # 55 AA
  ge_bps=$(le_uint "$1" 11 2) && ge_spc=$(le_uint "$1" 13 1) &&
    ge_reserved=$(le_uint "$1" 14 2) && ge_fats=$(le_uint "$1" 16 1) &&
    ge_fat=$(le_uint "$1" 36 4) && ge_root=$(le_uint "$1" 44 4) || return 1
  # FAT32: no 16-bit root entry count, no 16-bit FAT size
  [ "$(le_uint "$1" 17 2)" = 0 ] && [ "$(le_uint "$1" 22 2)" = 0 ] || return 1
  [ "$ge_bps" -ge 512 ] && [ $((ge_bps % 512)) = 0 ] && [ "$ge_spc" -ge 1 ] &&
    [ "$ge_root" -ge 2 ] || return 1
  ge_cluster_bytes=$((ge_bps * ge_spc))
  ge_data=$(((ge_reserved + ge_fats * ge_fat) * ge_bps))
  ge_dir=$((ge_data + (ge_root - 2) * ge_cluster_bytes))
  ge_e=0
  while [ "$ge_e" -lt "$ge_cluster_bytes" ]; do
    ge_at=$((ge_dir + ge_e))
    ge_first=$(le_uint "$1" "$ge_at" 1) && [ "$ge_first" != 0 ] || return 1
    ge_attr=$(le_uint "$1" $((ge_at + 11)) 1) || return 1
    # a directory (10) or a volume label or long-name entry (08) is not the file
    if [ "$(dd if="$1" bs=1 skip="$ge_at" count=11 2>/dev/null)" = "GRUBENV    " ] &&
      [ $((ge_attr & 24)) = 0 ]; then
      ge_hi=$(le_uint "$1" $((ge_at + 20)) 2) && ge_lo=$(le_uint "$1" $((ge_at + 26)) 2) &&
        ge_size=$(le_uint "$1" $((ge_at + 28)) 4) || return 1
      ge_cluster=$(((ge_hi << 16) | ge_lo))
      [ "$ge_size" = 1024 ] && [ "$ge_cluster" -ge 2 ] || return 1
      echo $((ge_data + (ge_cluster - 2) * ge_cluster_bytes))
      return 0
    fi
    ge_e=$((ge_e + 32))
  done
  return 1
}

# The value of variable $2 in the GRUB environment block /GRUBENV of the
# FAT32 file system on $1 (nothing when it has none).
esp_env_var() {
  ev_off=$(grubenv_offset "$1") || return 1
  dd if="$1" bs=512 skip=$((ev_off / 512)) count=2 2>/dev/null | sed -n "s/^$2=//p" | head -n 1
}

# Step 4: the disk this boot came from, as its sysfs directory, among the
# disks with a partition named abforge-$1 (partitions listed under $3, default
# /sys/class/block; device nodes in $4, default /dev). With a boot token $2:
# the disk whose ESP (partition "esp") holds boot_token=$2 in its /GRUBENV, so
# a byte-identical copy beside it is never taken; without one: the only disk
# with such a partition. Status 1: none (yet); 2: several (they are printed).
boot_disk() {
  bd_found="" bd_n=0
  for bd_u in "${3:-/sys/class/block}"/*/uevent; do
    [ -f "$bd_u" ] && grep -qx "PARTNAME=abforge-$1" "$bd_u" || continue
    bd_part=$(sed -n 's/^DEVNAME=//p' "$bd_u")
    [ -n "$bd_part" ] && [ -e "${4:-/dev}/$bd_part" ] || continue
    bd_disk=$(dirname "$(readlink -f "${bd_u%/uevent}")")
    if [ -n "$2" ]; then
      bd_esp=$(find_part esp "$bd_disk") && [ -e "${4:-/dev}/$bd_esp" ] || continue
      [ "$(esp_env_var "${4:-/dev}/$bd_esp" boot_token)" = "$2" ] || continue
    fi
    bd_found="$bd_found $bd_disk" bd_n=$((bd_n + 1))
  done
  case "$bd_n" in
  0) return 1 ;;
  1) echo "${bd_found# }" ;;
  *)
    echo "${bd_found# }"
    return 2
    ;;
  esac
}

# Step 4: wait (bounded) for the boot disk to appear (arguments and status:
# boot_disk's).
wait_boot_disk() {
  wb_i=0
  while :; do
    wb_out=$(boot_disk "$@")
    wb_status=$?
    if [ "$wb_status" != 1 ] || [ "$wb_i" -ge "$WAIT_TENTHS" ]; then
      [ -z "$wb_out" ] || echo "$wb_out"
      return "$wb_status"
    fi
    sleep 0.1
    wb_i=$((wb_i + 1))
  done
}

# The device names of sysfs directories $1 (vda, not /sys/.../vda).
names_of() {
  no_out=""
  for no_d in $1; do no_out="$no_out ${no_d##*/}"; done
  echo "${no_out# }"
}

# Step 7: the accounts an image adds reach a host that changed its own. $1
# is the image's /etc, $2 the overlay's upper /etc. For each of passwd,
# group, shadow and gshadow that the host has changed (a copy in the upper
# directory), the image's entries whose name the host's copy lacks are
# appended to it (written beside it, then renamed). The host's own entries
# and its changes to the image's are kept. Prints the names it added.
merge_accounts() {
  for ma_f in passwd group shadow gshadow; do
    [ -f "$2/$ma_f" ] && [ -f "$1/$ma_f" ] || continue
    ma_new=$(awk -F: 'NR == FNR { have[$1] = 1; next } $1 != "" && !($1 in have)' "$2/$ma_f" "$1/$ma_f") ||
      return 1
    [ -n "$ma_new" ] || continue
    cp -p "$2/$ma_f" "$2/.$ma_f.abforge" || return 1
    # The host's copy may lack its final newline.
    [ -z "$(tail -c 1 "$2/$ma_f")" ] || echo >>"$2/.$ma_f.abforge"
    printf '%s\n' "$ma_new" >>"$2/.$ma_f.abforge" || return 1
    sync
    mv -f "$2/.$ma_f.abforge" "$2/$ma_f" || return 1
    echo "/etc/$ma_f: $(printf '%s\n' "$ma_new" | cut -d: -f1 | tr '\n' ' ')"
  done
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

  # Step 4: the boot disk (the one holding this boot's token), its slot and
  # its state partition.
  disk_sys=$(wait_boot_disk "$slot" "$boot_token")
  case "$?" in
  0) ;;
  2)
    [ -z "$boot_token" ] ||
      fail "several disks hold boot token $boot_token in their /GRUBENV: $(names_of "$disk_sys")"
    fail "several disks have a partition named abforge-$slot ($(names_of "$disk_sys")) and GRUB passed no boot token"
    ;;
  *)
    [ -z "$boot_token" ] ||
      fail "no disk with a partition named abforge-$slot holds boot token $boot_token in its /GRUBENV (waited $((WAIT_TENTHS / 10)) s)"
    fail "no partition named abforge-$slot appeared within $((WAIT_TENTHS / 10)) s"
    ;;
  esac
  disk=$(names_of "$disk_sys")
  part=$(find_part "abforge-$slot" "$disk_sys") || fail "no partition named abforge-$slot on /dev/$disk"
  state_part=$(find_part state "$disk_sys") || fail "no partition named state on /dev/$disk"
  say "boot disk /dev/$disk (boot token ${boot_token:-none}): slot /dev/$part, state /dev/$state_part"

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
  # /var, and /home and /root where the image has them, live on the state
  # partition. What the image ships there seeds what the host lacks; the
  # host's own entries are never overwritten.
  for d in var home root; do
    [ "$d" = var ] || [ -d "$NEWROOT/$d" ] && [ ! -L "$NEWROOT/$d" ] || continue
    if [ ! -d "$STATE/$d" ]; then
      mkdir -p "$STATE/$d" && chmod "$(stat -c %a "$NEWROOT/$d")" "$STATE/$d" ||
        fail "cannot create $d on the state partition"
    fi
    cp -a -n "$NEWROOT/$d/." "$STATE/$d/" || say "seeding /$d from slot $slot failed; going on"
    mount --bind "$STATE/$d" "$NEWROOT/$d" || fail "cannot bind the state partition's $d on /$d"
  done
  if added=$(merge_accounts "$NEWROOT/etc" "$STATE/etc-overlay/upper"); then
    [ -z "$added" ] || echo "$added" | while read -r line; do say "accounts added from slot $slot to $line"; done
  else
    say "merging the image's accounts into the host's /etc failed; going on"
  fi
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
