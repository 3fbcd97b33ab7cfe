/**
 * The 64-bit attribute field of a GPT partition entry as a value type
 * (README.md, "Attribute bits"). Immutable: every `with...` returns a new value.
 *
 * | bits  | meaning                                           |
 * |-------|---------------------------------------------------|
 * | 0     | required (platform needs it; do not delete)       |
 * | 1     | no-block-io (firmware must not expose it)         |
 * | 2     | legacy-bios-bootable                              |
 * | 48-51 | priority 0-15 (ChromeOS/Flatcar A/B)              |
 * | 52-55 | tries left 0-15 (ChromeOS/Flatcar A/B)            |
 * | 56    | successful (ChromeOS/Flatcar A/B)                 |
 * | 59    | grow-file-system (Discoverable Partitions Spec)   |
 * | 60    | read-only (Discoverable Partitions Spec)          |
 * | 63    | no-auto (Discoverable Partitions Spec)            |
 */
import { GptError } from "./errors.ts";

const MAX_U64 = (1n << 64n) - 1n;

const BIT_REQUIRED = 0n;
const BIT_NO_BLOCK_IO = 1n;
const BIT_LEGACY_BIOS_BOOTABLE = 2n;
const PRIORITY_SHIFT = 48n;
const TRIES_SHIFT = 52n;
const BIT_SUCCESSFUL = 56n;
const BIT_GROWFS = 59n;
const BIT_READ_ONLY = 60n;
const BIT_NO_AUTO = 63n;

export interface GptAttributesJson {
  raw: string;
  required: boolean;
  noBlockIo: boolean;
  legacyBiosBootable: boolean;
  priority: number;
  tries: number;
  successful: boolean;
  growFs: boolean;
  readOnly: boolean;
  noAuto: boolean;
}

export class GptAttributes {
  readonly raw: bigint;

  constructor(raw: bigint = 0n) {
    if (typeof raw !== "bigint" || raw < 0n || raw > MAX_U64) {
      throw new GptError(
        "GPT_BAD_INPUT",
        `partition attributes ${String(raw)} are not a 64-bit unsigned value`,
      );
    }
    this.raw = raw;
  }

  static readonly NONE = new GptAttributes(0n);

  get required(): boolean {
    return this.bit(BIT_REQUIRED);
  }
  get noBlockIo(): boolean {
    return this.bit(BIT_NO_BLOCK_IO);
  }
  get legacyBiosBootable(): boolean {
    return this.bit(BIT_LEGACY_BIOS_BOOTABLE);
  }
  /** ChromeOS/Flatcar boot priority, 0-15 (0: never boot). */
  get priority(): number {
    return this.nibble(PRIORITY_SHIFT);
  }
  /** ChromeOS/Flatcar tries left, 0-15. */
  get tries(): number {
    return this.nibble(TRIES_SHIFT);
  }
  /** ChromeOS/Flatcar: this partition has booted successfully. */
  get successful(): boolean {
    return this.bit(BIT_SUCCESSFUL);
  }
  get growFs(): boolean {
    return this.bit(BIT_GROWFS);
  }
  get readOnly(): boolean {
    return this.bit(BIT_READ_ONLY);
  }
  get noAuto(): boolean {
    return this.bit(BIT_NO_AUTO);
  }

  withRequired(on: boolean): GptAttributes {
    return this.withBit(BIT_REQUIRED, on);
  }
  withNoBlockIo(on: boolean): GptAttributes {
    return this.withBit(BIT_NO_BLOCK_IO, on);
  }
  withLegacyBiosBootable(on: boolean): GptAttributes {
    return this.withBit(BIT_LEGACY_BIOS_BOOTABLE, on);
  }
  withPriority(n: number): GptAttributes {
    return this.withNibble(PRIORITY_SHIFT, n, "priority");
  }
  withTries(n: number): GptAttributes {
    return this.withNibble(TRIES_SHIFT, n, "tries");
  }
  withSuccessful(on: boolean): GptAttributes {
    return this.withBit(BIT_SUCCESSFUL, on);
  }
  withGrowFs(on: boolean): GptAttributes {
    return this.withBit(BIT_GROWFS, on);
  }
  withReadOnly(on: boolean): GptAttributes {
    return this.withBit(BIT_READ_ONLY, on);
  }
  withNoAuto(on: boolean): GptAttributes {
    return this.withBit(BIT_NO_AUTO, on);
  }

  equals(other: GptAttributes): boolean {
    return this.raw === other.raw;
  }

  /** Numbers of the bits that are set, lowest first (the form sgdisk and sfdisk list). */
  setBits(): number[] {
    const bits: number[] = [];
    for (let i = 0; i < 64; i++) if (this.bit(BigInt(i))) bits.push(i);
    return bits;
  }

  /** `0x` and 16 hex digits. */
  toHex(): string {
    return `0x${this.raw.toString(16).toUpperCase().padStart(16, "0")}`;
  }

  /** Short human form: `required priority=2 tries=1 successful`, or `-` when none are set. */
  toString(): string {
    const parts: string[] = [];
    if (this.required) parts.push("required");
    if (this.noBlockIo) parts.push("no-block-io");
    if (this.legacyBiosBootable) parts.push("legacy-bios-bootable");
    if (this.priority) parts.push(`priority=${this.priority}`);
    if (this.tries) parts.push(`tries=${this.tries}`);
    if (this.successful) parts.push("successful");
    if (this.growFs) parts.push("growfs");
    if (this.readOnly) parts.push("read-only");
    if (this.noAuto) parts.push("no-auto");
    const known =
      (1n << BIT_REQUIRED) |
      (1n << BIT_NO_BLOCK_IO) |
      (1n << BIT_LEGACY_BIOS_BOOTABLE) |
      (0xffn << PRIORITY_SHIFT) |
      (1n << BIT_SUCCESSFUL) |
      (1n << BIT_GROWFS) |
      (1n << BIT_READ_ONLY) |
      (1n << BIT_NO_AUTO);
    const other = this.raw & ~known;
    if (other) parts.push(`other=0x${other.toString(16).toUpperCase()}`);
    return parts.length ? parts.join(" ") : "-";
  }

  toJSON(): GptAttributesJson {
    return {
      raw: this.toHex(),
      required: this.required,
      noBlockIo: this.noBlockIo,
      legacyBiosBootable: this.legacyBiosBootable,
      priority: this.priority,
      tries: this.tries,
      successful: this.successful,
      growFs: this.growFs,
      readOnly: this.readOnly,
      noAuto: this.noAuto,
    };
  }

  private bit(n: bigint): boolean {
    return ((this.raw >> n) & 1n) === 1n;
  }

  private nibble(shift: bigint): number {
    return Number((this.raw >> shift) & 0xfn);
  }

  private withBit(n: bigint, on: boolean): GptAttributes {
    const mask = 1n << n;
    return new GptAttributes(on ? this.raw | mask : this.raw & ~mask);
  }

  private withNibble(shift: bigint, n: number, what: string): GptAttributes {
    if (!Number.isInteger(n) || n < 0 || n > 15) {
      throw new GptError(
        "GPT_BAD_INPUT",
        `partition attribute ${what} must be an integer 0-15, got ${n}`,
        {
          details: { [what]: n },
        },
      );
    }
    return new GptAttributes((this.raw & ~(0xfn << shift)) | (BigInt(n) << shift));
  }
}
