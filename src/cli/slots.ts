/**
 * `abforge slots ...`: show and steer the A/B boot state on a disk image or,
 * without `--disk`, on the running host's boot disk.
 */
import { type Command, InvalidArgumentError } from "commander";
import {
  BootloaderError,
  type BootState,
  isSlotName,
  isUnconfirmed,
  markGood,
  nextBootSlot,
  openBootTarget,
  type SlotName,
  setNext,
} from "../bootloader/index.ts";
import { STATE_DIR } from "../image/index.ts";
import { diskStateDir, type EmptySlot, formatEmptySlot, readEmptySlot } from "../updater/index.ts";
import { action, intOption, type JsonOption, output } from "./command.ts";

interface DiskOption extends JsonOption {
  disk?: string;
}

function slotArgument(value: string): SlotName {
  const v = value.toUpperCase();
  if (!isSlotName(v)) throw new InvalidArgumentError(`slot must be A or B, got "${value}"`);
  return v;
}

/** A good slot GRUB passes over: booted goodTries times in a row without a confirmation. */
function fallbackOf(s: BootState) {
  const x = s.order.find((x) => isUnconfirmed(s, x) && nextBootSlot(s) !== x);
  if (x === undefined) return null;
  const other = s.order.find((y) => y !== x)!;
  return {
    slot: x,
    version: s.slots[x].version,
    unconfirmedBoots: s.slots[x].boots,
    bootsInstead: other,
    reason: `slot ${x} (${s.slots[x].version}) was booted ${s.slots[x].boots} times in a row without a confirmation; the bootloader boots slot ${other} while that one is good`,
  };
}

function report(
  path: string,
  s: BootState,
  booted: SlotName | null,
  /** `show` only: why a slot an install emptied is still empty (the agent's state file). */
  emptySlot?: EmptySlot | null,
) {
  return {
    disk: path,
    order: s.order,
    next: nextBootSlot(s),
    booted,
    goodTries: s.goodTries,
    fallback: fallbackOf(s),
    slots: Object.fromEntries(
      s.order.map((x) => {
        const slot = s.slots[x];
        return [
          x,
          {
            version: slot.version,
            rootHash: slot.rootHash,
            verity: slot.verity,
            good: slot.good,
            triesLeft: slot.tries,
            unconfirmedBoots: slot.boots,
            empty: slot.rootHash === "",
          },
        ];
      }),
    ),
    ...(emptySlot === undefined ? {} : { emptySlot }),
  };
}

function text(r: ReturnType<typeof report>): string {
  const rows = [["slot", "version", "good", "tries", "boots", "root hash"]];
  for (const x of ["A", "B"] as const) {
    const s = r.slots[x]!;
    const boots = s.good ? `${s.unconfirmedBoots}/${r.goodTries}` : "-";
    rows.push(
      s.empty
        ? [x, "(empty)", "-", String(s.triesLeft), "-", "-"]
        : [x, s.version, s.good ? "yes" : "no", String(s.triesLeft), boots, s.rootHash],
    );
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const table = rows.map((row) =>
    row
      .map((c, i) => c.padEnd(widths[i]!))
      .join("  ")
      .trimEnd(),
  );
  return [
    `disk: ${r.disk}`,
    `order: ${r.order.join(" ")}`,
    `next boot: ${r.next ?? "none (no bootable slot)"}`,
    ...(r.booted ? [`booted: ${r.booted}`] : []),
    ...(r.fallback ? [`fallback: ${r.fallback.reason}`] : []),
    "",
    ...table,
    ...(r.emptySlot ? ["", `empty: ${formatEmptySlot(r.emptySlot)}`] : []),
  ].join("\n");
}

/** Open the target disk, apply `change` in memory, write once, print the result. */
async function change(
  opts: DiskOption,
  fn: (s: BootState, booted: SlotName | null) => BootState,
): Promise<void> {
  const { disk, booted } = await openBootTarget(opts.disk);
  try {
    const next = fn(await disk.readState(), booted);
    await disk.writeState(next);
    const r = report(disk.path, await disk.readState(), booted);
    output(opts, r, () => text(r));
  } finally {
    await disk.close();
  }
}

/** mark-good's slot: the one named, else the booted one (host) or the next one (--disk). */
function goodSlot(
  named: SlotName | undefined,
  s: BootState,
  booted: SlotName | null,
  d: string | undefined,
) {
  if (named) return named;
  if (d === undefined) {
    if (booted) return booted;
    throw new BootloaderError(
      "BOOT_DISK_NOT_FOUND",
      "this host was not booted by abforge (no abforge.slot= in /proc/cmdline): name the slot",
    );
  }
  const next = nextBootSlot(s);
  if (next) return next;
  throw new BootloaderError("BOOT_REFUSED", `no slot of ${d} boots next: name the slot`);
}

export function register(program: Command): void {
  const slots = program
    .command("slots")
    .description(
      "show and steer the A/B boot state (the running host's boot disk unless --disk is given)",
    );

  slots
    .command("show")
    .description("per slot: version, root hash, good, tries left; and which slot boots next")
    .option("--disk <image>", "disk image or block device (default: this host's boot disk)")
    .option(
      "--state-dir <dir>",
      `the agent's state directory, read for why a slot is empty (default ${STATE_DIR}; with --disk, <image>.abforge-state)`,
    )
    .option("--json", "print JSON")
    .action(
      action(async (opts: DiskOption & { stateDir?: string }) => {
        const { disk, booted } = await openBootTarget(opts.disk, { readOnly: true });
        try {
          const s = await disk.readState();
          const stateDir =
            opts.stateDir ?? (opts.disk === undefined ? STATE_DIR : diskStateDir(opts.disk));
          const r = report(disk.path, s, booted, await readEmptySlot(stateDir, s));
          output(opts, r, () => text(r));
        } finally {
          await disk.close();
        }
      }),
    );

  slots
    .command("set-next")
    .description(
      "boot this slot next; with --tries, boot it on trial (not good, N tries; needs the other slot good)",
    )
    .argument("<slot>", "A or B", slotArgument)
    .option("--tries <n>", "tries for a trial boot (1-9)", intOption("--tries"))
    .option("--disk <image>", "disk image or block device (default: this host's boot disk)")
    .option("--json", "print JSON")
    .action(
      action(async (slot: SlotName, opts: DiskOption & { tries?: number }) => {
        await change(opts, (s) => setNext(s, slot, opts.tries));
      }),
    );

  slots
    .command("mark-good")
    .description(
      "mark a slot good (default: the booted slot; with --disk, the slot that boots next)",
    )
    .argument("[slot]", "A or B", slotArgument)
    .option("--disk <image>", "disk image or block device (default: this host's boot disk)")
    .option("--json", "print JSON")
    .action(
      action(async (slot: SlotName | undefined, opts: DiskOption) => {
        await change(opts, (s, booted) => markGood(s, goodSlot(slot, s, booted, opts.disk)));
      }),
    );
}
