/**
 * GRUB for abforge disks: the grub.cfg that implements the boot rule of the
 * boot-state contract, and the x86_64 EFI image that carries it. Procedure:
 * src/build/README.md, "GRUB".
 *
 * GRUB's embedded config (`grub-mkimage -c`) runs in the rescue parser, which
 * knows no `if`, `for` or `function`. So the embedded config only hands over
 * to normal mode with the real grub.cfg, which sits in a memdisk (a tar inside
 * the EFI image): the ESP holds nothing but the EFI image and /GRUBENV.
 */
import { mkdir, mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { run } from "../exec.ts";
import {
  BOOT_TOKEN_PATTERN,
  BOOT_TOKEN_VAR,
  CMDLINE_PREFIX,
  CMDLINE_KEYS as K,
} from "../image/index.ts";
import { logger } from "../log.ts";
import { BootloaderError } from "./errors.ts";
import { concat } from "./openpgp.ts";
import {
  detachedSignature,
  INITRD_CPIO_SIGNATURE,
  type SecureBootKeys,
  SLOT_BOOT_FILES,
  sbsignEfi,
  signatureName,
} from "./secureboot.ts";
import { DEFAULT_GOOD_TRIES, MAX_TRIES, type SlotName, type SlotState } from "./state.ts";

/** GPT partition number of each slot on an abforge disk (disk layout contract). */
export const SLOT_PARTITIONS: Record<SlotName, number> = { A: 2, B: 3 };

/** Modules built into the EFI image (FACTS.md list plus what grub.cfg uses). */
export const GRUB_MODULES: readonly string[] = [
  "part_gpt",
  "fat",
  "squash4",
  "gzio",
  "xzio",
  "search",
  "loadenv",
  "test",
  "echo",
  "linux",
  "boot",
  "normal",
  "regexp",
  "halt",
  "reboot",
  "memdisk",
  "tar",
  // $YEAR ... $SECOND from the firmware clock: this boot's token
  "datehook",
  // the firmware's framebuffer (GOP), handed to the kernel: without a video
  // module GRUB prints "error: no suitable video mode found" at every boot
  "efi_gop",
];

/** Characters a kernel command line from a spec may use: it is pasted into GRUB script. */
const CMDLINE_SAFE = /^[A-Za-z0-9 =,._:/+@%-]*$/;

export interface GrubConfigOptions {
  /** The spec's kernel command line (e.g. `console=ttyS0 quiet`). */
  cmdline: string;
  /**
   * The Secure Boot script (README.md, "Secure Boot"): root hash, verity and
   * version only from the slot's signed boot file, the initrd's signature
   * checked before the kernel is loaded, only counters and the order read
   * from /GRUBENV.
   */
  secureBoot?: boolean;
}

/** Modules a Secure Boot image adds: OpenPGP signatures (RSA, SHA-256) and `source`. */
export const GRUB_SECURE_BOOT_MODULES: readonly string[] = [
  "pgp",
  "gcry_rsa",
  "gcry_sha256",
  "configfile",
];

/** What GRUB appends to every slot's command line, after the spec's: a panic restarts the machine, so GRUB counts the try. */
export const GRUB_CMDLINE_TAIL = "panic=5";

/** What GRUB's `linux` command puts first on the command line it hands over (`BOOT_IMAGE=<path>`). */
const GRUB_BOOT_IMAGE = "BOOT_IMAGE=";

/**
 * The kernel command line GRUB builds for a slot (`slotFunction` below, the
 * `linux` line): the `abforge.*` keys from the slot's boot state and this
 * boot's token, the spec's command line, `panic=5`. Pure; for a kexec into
 * the slot (README.md, "Booting by kexec"). Throws BOOT_REFUSED for an
 * empty slot, GRUB_BAD_CMDLINE for a command line GRUB could not carry.
 */
export function slotCmdline(o: {
  slot: SlotName;
  state: SlotState;
  /** 14 digits, or "" as GRUB passes when it could not save one. */
  bootToken: string;
  /** The spec's command line (`specCmdline` of the running one). */
  cmdline: string;
}): string {
  const { slot, state } = o;
  if (state.rootHash === "")
    throw new BootloaderError("BOOT_REFUSED", `slot ${slot} is empty: it has no command line`, {
      details: { slot },
    });
  const cmdline = o.cmdline.trim().replace(/\s+/g, " ");
  if (!CMDLINE_SAFE.test(cmdline) || cmdline.split(" ").some((w) => w.startsWith(CMDLINE_PREFIX)))
    throw new BootloaderError(
      "GRUB_BAD_CMDLINE",
      `kernel command line "${o.cmdline}": GRUB would not pass it (quotes, $, abforge.* keys)`,
      { details: { cmdline: o.cmdline } },
    );
  return [
    `${K.slot}=${slot}`,
    `${K.rootHash}=${state.rootHash}`,
    `${K.verity}=${state.verity}`,
    `${K.version}=${state.version}`,
    `${K.bootToken}=${o.bootToken}`,
    ...(cmdline ? [cmdline] : []),
    GRUB_CMDLINE_TAIL,
  ].join(" ");
}

/**
 * The spec's command line inside a command line GRUB built (`/proc/cmdline`
 * of a booted slot): without GRUB's `BOOT_IMAGE=`, the `abforge.*` keys and
 * the last `panic=5`. The spec's line lives in the ESP's GRUB image and an
 * update never changes it, so the running one is the one the next slot gets.
 */
export function specCmdline(running: string): string {
  const words = running
    .trim()
    .split(/\s+/)
    .filter((w) => w !== "");
  if (words[0]?.startsWith(GRUB_BOOT_IMAGE)) words.shift();
  if (words.at(-1) === GRUB_CMDLINE_TAIL) words.pop();
  return words.filter((w) => !w.startsWith(CMDLINE_PREFIX)).join(" ");
}

/**
 * A boot token for a boot that GRUB does not see (a kexec): the clock's time
 * in GRUB's form, `YYYYMMDDhhmmss` (UTC, as QEMU's and most servers' RTC),
 * and always later than the token of the boot running now, so a disk copied
 * during this boot never holds the next one (README.md, "Boot token").
 */
export function nextBootToken(now: Date, previous: string | null): string {
  const format = (d: Date) => d.toISOString().replace(/[-:T]/g, "").slice(0, 14);
  let token = format(now);
  if (previous !== null && BOOT_TOKEN_PATTERN.test(previous) && token <= previous) {
    const p = previous;
    const t = Date.UTC(
      +p.slice(0, 4),
      +p.slice(4, 6) - 1,
      +p.slice(6, 8),
      +p.slice(8, 10),
      +p.slice(10, 12),
      +p.slice(12, 14),
    );
    token = format(new Date(t + 1000));
  }
  return token;
}

function slotFunction(slot: SlotName, cmdline: string, secureBoot: boolean): string {
  const part = SLOT_PARTITIONS[slot];
  const decrements: string[] = [];
  for (let n = 1; n <= MAX_TRIES; n++) {
    decrements.push(
      `  elif [ "$${slot}_tries" = ${n} ]; then`,
      `    set ${slot}_tries=${n - 1}`,
      `    if save_env --file "$abforge_env" ${slot}_tries; then set abforge_boot=1; fi`,
    );
  }
  const increments: string[] = [];
  for (let n = 0; n < MAX_TRIES; n++) {
    increments.push(
      `${n === 0 ? "      if" : "      elif"} [ "$${slot}_boots" = ${n} ]; then`,
      `        set ${slot}_boots=${n + 1}`,
    );
  }
  const dev = `($abforge_disk,gpt${part})`;
  return [
    `function abforge_try_${slot} {`,
    "  set abforge_boot=0",
    `  if [ "$${slot}_good" = 1 ]; then`,
    '    if [ "$abforge_last" = 1 ]; then',
    "      set abforge_boot=1",
    `    elif [ "$${slot}_boots" -lt "$good_tries" ]; then`,
    ...increments,
    "      fi",
    // A good slot boots even when the count cannot be saved: better than none.
    `      save_env --file "$abforge_env" ${slot}_boots`,
    "      set abforge_boot=1",
    "    else",
    `      echo "abforge: slot ${slot} was booted $${slot}_boots times without a confirmation; passing it over"`,
    "    fi",
    '  elif [ "$abforge_last" = 1 ]; then',
    "    set abforge_boot=0",
    ...decrements,
    "  else",
    `    echo "abforge: skipping slot ${slot} (not good, no tries left)"`,
    "  fi",
    '  if [ "$abforge_boot" = 1 ]; then',
    ...(secureBoot ? secureBootBody(slot, cmdline, dev) : plainBody(slot, cmdline, dev)),
    "  fi",
    "}",
  ].join("\n");
}

/** Booting slot X without Secure Boot: root hash, verity and version from /GRUBENV. */
function plainBody(slot: SlotName, cmdline: string, dev: string): string[] {
  return [
    `    if [ -z "$${slot}_roothash" ]; then`,
    `      echo "abforge: slot ${slot} is empty"`,
    "    else",
    `      echo "abforge: booting slot ${slot} version $${slot}_version (good=$${slot}_good tries=$${slot}_tries boots=$${slot}_boots)"`,
    ...loadAndBoot(slot, cmdline, dev, `$${slot}_`),
    `      echo "abforge: slot ${slot}: cannot load its kernel or initrd"`,
    "    fi",
  ];
}

/**
 * Booting slot X under Secure Boot (README.md, "Secure Boot", link 3): the
 * slot's signed boot file sets `abforge_roothash`, `abforge_verity` and
 * `abforge_version` (a file whose signature does not verify is not run);
 * the initrd's signature is checked before the kernel is loaded, since
 * GRUB 2.06 cannot boot another kernel after a loaded one's initrd failed.
 */
function secureBootBody(slot: SlotName, cmdline: string, dev: string): string[] {
  return [
    '    set abforge_roothash=""',
    '    set abforge_verity=""',
    '    set abforge_version=""',
    `    source "($abforge_esp)/${SLOT_BOOT_FILES[slot]}"`,
    '    if [ -z "$abforge_roothash" ]; then',
    `      echo "abforge: slot ${slot}: no signed boot file (the slot is empty, or its signature does not verify)"`,
    `    elif verify_detached ${dev}/boot/initrd.img ${dev}/boot/${INITRD_CPIO_SIGNATURE}; then`,
    `      echo "abforge: booting slot ${slot} version $abforge_version (good=$${slot}_good tries=$${slot}_tries boots=$${slot}_boots)"`,
    ...loadAndBoot(slot, cmdline, dev, "$abforge_"),
    `      echo "abforge: slot ${slot}: cannot load its kernel (its signature does not verify, or it is missing)"`,
    "    else",
    `      echo "abforge: slot ${slot}: its initrd's signature does not verify"`,
    "    fi",
  ];
}

/** `linux`, `initrd`, `boot`, and what GRUB does when the initrd fails after the kernel loaded. */
function loadAndBoot(slot: SlotName, cmdline: string, dev: string, v: string): string[] {
  return [
    `      if linux ${dev}/boot/vmlinuz ${K.slot}=${slot} "${K.rootHash}=${v}roothash" "${K.verity}=${v}verity" "${K.version}=${v}version" "${K.bootToken}=$abforge_token"${cmdline ? ` ${cmdline}` : ""} ${GRUB_CMDLINE_TAIL}; then`,
    `        if initrd ${dev}/boot/initrd.img; then`,
    "          boot",
    "        fi",
    // The kernel is loaded but the initrd (or boot) failed. GRUB 2.06 does not
    // recover from that: the next kernel it boots hangs before its first line.
    // A slot on trial gives up its tries and the machine restarts into a fresh
    // GRUB, which goes on to the next slot. A good slot restarts too: this boot
    // is counted, and after good_tries of them GRUB passes it over. In the last
    // pass nothing is counted any more: it can only fall through.
    `        echo "abforge: slot ${slot}: cannot load its initrd"`,
    `        if [ "$${slot}_good" != 1 ]; then`,
    `          set ${slot}_tries=0`,
    `          save_env --file "$abforge_env" ${slot}_tries`,
    `          echo "abforge: slot ${slot}: giving up its tries, restarting"`,
    "          reboot",
    '        elif [ "$abforge_last" != 1 ]; then',
    `          echo "abforge: slot ${slot}: restarting (this boot is counted as unconfirmed)"`,
    "          reboot",
    "        fi",
    "      fi",
  ];
}

/** grub.cfg: try the slots in the boot state's order (steps 4 and 5 run it). */
const TRY_IN_ORDER = `if [ "$order" = "B A" ]; then
  abforge_try_B
  abforge_try_A
else
  abforge_try_A
  abforge_try_B
fi`;

/**
 * The grub.cfg of every abforge disk (README.md, "GRUB", steps 1-5). Pure.
 * Throws BootloaderError GRUB_BAD_CMDLINE for a command line GRUB script
 * would misread (quotes, `$`, `;`, braces, newlines).
 */
export function grubConfig(o: GrubConfigOptions): string {
  const cmdline = o.cmdline.trim().replace(/\s+/g, " ");
  if (!CMDLINE_SAFE.test(cmdline)) {
    throw new BootloaderError(
      "GRUB_BAD_CMDLINE",
      `kernel command line "${o.cmdline}": only letters, digits, spaces and = , . _ : / + @ % - are allowed`,
      { details: { cmdline: o.cmdline } },
    );
  }
  const secureBoot = o.secureBoot === true;
  const vars = ["order", "good_tries"];
  for (const s of ["A", "B"] as const) {
    for (const v of ["tries", "good", "boots", "roothash", "verity", "version"])
      vars.push(`${s}_${v}`);
  }
  // Under Secure Boot /GRUBENV is unsigned: only the counters and the order come from it.
  const loaded = secureBoot ? vars.filter((v) => !/_(roothash|verity|version)$/.test(v)) : vars;
  return `# abforge grub.cfg: the boot rule of src/build/README.md, "GRUB".
set timeout=0
set pager=0

# 1. The ESP is the partition this EFI image was loaded from; the slots are
#    partitions ${SLOT_PARTITIONS.A} and ${SLOT_PARTITIONS.B} of the same disk.
regexp --set=1:abforge_esp '^\\((.*)\\)' "$cmdpath"
if [ -z "$abforge_esp" ]; then
  search --no-floppy --file /GRUBENV --set=abforge_esp
fi
regexp --set=1:abforge_disk '^(.*),gpt[0-9]+$' "$abforge_esp"
if [ -z "$abforge_disk" ]; then
  echo "abforge: cannot find the boot disk (cmdpath $cmdpath)"
  echo "abforge: no bootable slot"
  halt
fi
set abforge_env="($abforge_esp)/GRUBENV"

# 2. The boot state, with safe defaults for anything missing, then this
#    boot's token.
set order="A B"
set good_tries=${DEFAULT_GOOD_TRIES}
${vars
  .slice(2)
  .map((v) => `set ${v}=${/_(tries|good|boots)$/.test(v) ? "0" : '""'}`)
  .join("\n")}
load_env ${secureBoot ? "--skip-sig " : ""}--file "$abforge_env" ${loaded.join(" ")}

#    This boot's token: the firmware clock's time, YYYYMMDDhhmmss, saved in
#    this disk's block as ${BOOT_TOKEN_VAR} and passed as ${K.bootToken}=, so
#    the initramfs and the agent find the disk GRUB booted from even beside a
#    byte-identical copy (src/bootloader/README.md, "Boot token"). No clock,
#    or no save: an empty token.
function abforge_two_digits {
  if [ "$1" -lt 10 ]; then
    set abforge_t="\${abforge_t}0$1"
  else
    set abforge_t="\${abforge_t}$1"
  fi
}
set abforge_token=""
set abforge_t="$YEAR"
abforge_two_digits "$MONTH"
abforge_two_digits "$DAY"
abforge_two_digits "$HOUR"
abforge_two_digits "$MINUTE"
abforge_two_digits "$SECOND"
if regexp '^[0-9]{14}$' "$abforge_t"; then
  set ${BOOT_TOKEN_VAR}="$abforge_t"
  if save_env --file "$abforge_env" ${BOOT_TOKEN_VAR}; then
    set abforge_token="$${BOOT_TOKEN_VAR}"
  fi
fi

# 3. Per slot: good and fewer than good_tries unconfirmed boots: boots + 1,
#    save_env, boot (the agent sets boots back to 0 once the slot is up);
#    good with good_tries unconfirmed boots: pass it over; tries > 0:
#    tries - 1, save_env, boot; else skip. GRUB has no arithmetic: the
#    increment and the decrement are unrolled, so each counter stays one
#    digit. A kernel or initrd that does not load falls through to the next
#    slot. In the last pass (step 5) a good slot boots whatever its count.
${slotFunction("A", cmdline, secureBoot)}

${slotFunction("B", cmdline, secureBoot)}

# 4. The slot order.
${TRY_IN_ORDER}

# 5. Nothing booted: a good slot that was passed over boots after all,
#    without counting (better an unconfirmed slot than none).
set abforge_last=1
${TRY_IN_ORDER}

# 6. Nothing booted.
echo "abforge: no bootable slot"
halt
`;
}

/**
 * The config embedded with `grub-mkimage -c`: rescue-parser commands only.
 * It enters normal mode with the memdisk's grub.cfg; if that ever returns,
 * it powers off rather than wait at a prompt.
 */
export const EARLY_CONFIG = `normal (memdisk)/grub.cfg
echo "abforge: no bootable slot"
halt
`;

/**
 * A ustar archive holding one regular file (owner 0:0, mode 0644, mtime 0),
 * the memdisk GRUB reads grub.cfg from. Pure and deterministic.
 */
export function ustarSingleFile(name: string, data: Uint8Array): Uint8Array {
  return ustarFiles([{ name, data }]);
}

/** A ustar archive of regular files (owner 0:0, mode 0644, mtime 0), in the given order. Pure. */
export function ustarFiles(files: readonly { name: string; data: Uint8Array }[]): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  for (const { name, data } of files) {
    if (enc.encode(name).length > 99) throw new Error(`ustar name too long: ${name}`);
    const header = new Uint8Array(512);
    const put = (offset: number, text: string) => header.set(enc.encode(text), offset);
    const octal = (n: number, width: number) => `${n.toString(8).padStart(width - 1, "0")}\0`;
    put(0, name);
    put(100, octal(0o644, 8));
    put(108, octal(0, 8));
    put(116, octal(0, 8));
    put(124, octal(data.length, 12));
    put(136, octal(0, 12));
    put(148, "        "); // checksum field counts as spaces while summing
    put(156, "0");
    put(257, "ustar\0");
    put(263, "00");
    let sum = 0;
    for (const b of header) sum += b;
    put(148, `${sum.toString(8).padStart(6, "0")}\0 `);
    const body = new Uint8Array(Math.ceil(data.length / 512) * 512);
    body.set(data, 0);
    parts.push(header, body);
  }
  parts.push(new Uint8Array(1024));
  return concat(...parts);
}

/**
 * Build the EFI image (`/EFI/BOOT/BOOTX64.EFI`) carrying `cfg` (README.md,
 * "GRUB"): `grub-mkimage -O x86_64-efi` with the memdisk and the early
 * config. Byte-identical for the same cfg and GRUB version. With
 * `secureBoot` (README.md, "Secure Boot"): the OpenPGP public key embedded
 * (so GRUB enforces signatures on every file it opens), grub.cfg's signature
 * in the memdisk, the prefix in the memdisk (no module or list is ever read
 * from the ESP), no shim_lock verifier, and the image signed with sbsign.
 */
export async function buildGrubEfi(
  outPath: string,
  cfg: string,
  secureBoot?: SecureBootKeys,
): Promise<void> {
  const started = Date.now();
  const work = await mkdtemp(join(tmpdir(), "abforge-grub-"));
  const tmp = `${outPath}.tmp-${process.pid}`;
  try {
    const memdisk = join(work, "memdisk.tar");
    const early = join(work, "early.cfg");
    const cfgBytes = new TextEncoder().encode(cfg);
    const files: { name: string; data: Uint8Array }[] = [{ name: "grub.cfg", data: cfgBytes }];
    if (secureBoot)
      files.push({
        name: signatureName("grub.cfg"),
        data: detachedSignature(cfgBytes, secureBoot),
      });
    await writeFile(memdisk, ustarFiles(files));
    await writeFile(early, EARLY_CONFIG);
    await mkdir(dirname(outPath), { recursive: true });
    const sbArgs: string[] = [];
    if (secureBoot) {
      const pub = join(work, "pubkey.gpg");
      await writeFile(pub, secureBoot.pgp.packet);
      sbArgs.push("--pubkey", pub, "--disable-shim-lock");
    }
    const unsigned = secureBoot ? join(work, "grub.efi") : tmp;
    await run("grub-mkimage", [
      "-O",
      "x86_64-efi",
      "-p",
      secureBoot ? "(memdisk)" : "/EFI/BOOT",
      "-c",
      early,
      "-m",
      memdisk,
      ...sbArgs,
      "-o",
      unsigned,
      ...GRUB_MODULES,
      ...(secureBoot ? GRUB_SECURE_BOOT_MODULES : []),
    ]);
    if (secureBoot) await sbsignEfi(unsigned, tmp, secureBoot);
    await rename(tmp, outPath);
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { force: true });
  }
  logger()
    .child({ module: "bootloader", step: "grub" })
    .info(
      { path: outPath, secureBoot: secureBoot !== undefined, ms: Date.now() - started },
      "GRUB EFI image built",
    );
}
