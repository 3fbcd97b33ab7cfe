/**
 * Partition type GUIDs from the UAPI Group's Discoverable Partitions
 * Specification (DPS), "Defined Partition Type UUIDs". The interop test
 * checks each one against `sfdisk -T --label gpt`.
 */
import { isGuid } from "./guid.ts";

export const PARTITION_TYPES = {
  /** EFI System Partition (UEFI spec; DPS SD_GPT_ESP) */
  ESP: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
  /** Extended Boot Loader Partition (SD_GPT_XBOOTLDR) */
  XBOOTLDR: "BC13C2FF-59E6-4262-A352-B275FD6F7172",
  /** Root Partition (amd64/x86_64) (SD_GPT_ROOT_X86_64) */
  ROOT_X86_64: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
  /** Root Verity Partition (amd64/x86_64) (SD_GPT_ROOT_X86_64_VERITY) */
  ROOT_VERITY_X86_64: "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5",
  /** Root Partition (64-bit ARM/AArch64) (SD_GPT_ROOT_ARM64) */
  ROOT_ARM64: "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
  /** Root Verity Partition (64-bit ARM/AArch64) (SD_GPT_ROOT_ARM64_VERITY) */
  ROOT_VERITY_ARM64: "DF3300CE-D69F-4C92-978C-9BFB0F38D820",
  /** /usr/ Partition (amd64/x86_64) (SD_GPT_USR_X86_64) */
  USR_X86_64: "8484680C-9521-48C6-9C11-B0720656F69E",
  /** /usr/ Verity Partition (amd64/x86_64) (SD_GPT_USR_X86_64_VERITY) */
  USR_VERITY_X86_64: "77FF5F63-E7B6-4633-ACF4-1565B864C0E6",
  /** /usr/ Partition (64-bit ARM/AArch64) (SD_GPT_USR_ARM64) */
  USR_ARM64: "B0E01050-EE5F-4390-949A-9101B17104E9",
  /** /usr/ Verity Partition (64-bit ARM/AArch64) (SD_GPT_USR_ARM64_VERITY) */
  USR_VERITY_ARM64: "6E11A4E7-FBCA-4DED-B9E9-E1A512BB664E",
  /** Variable Data Partition, /var/ (SD_GPT_VAR) */
  VAR: "4D21B016-B534-45C2-A9FB-5C16E091FD2D",
  /** Home Partition, /home/ (SD_GPT_HOME) */
  HOME: "933AC7E1-2EB4-4F13-B844-0E14E2AEF915",
  /** Server Data Partition, /srv/ (SD_GPT_SRV) */
  SRV: "3B8F8425-20E0-4F3B-907F-1A25A76F98E8",
  /** Temporary Data Partition, /var/tmp/ (SD_GPT_TMP) */
  TMP: "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1",
  /** Swap (SD_GPT_SWAP) */
  SWAP: "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
  /** Generic Linux Data Partition (SD_GPT_LINUX_GENERIC) */
  LINUX_GENERIC: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
} as const;

export type PartitionTypeKey = keyof typeof PARTITION_TYPES;

export interface PartitionTypeInfo {
  key: PartitionTypeKey;
  guid: string;
  /** Short name for the command line: `esp`, `root-x86-64`, `linux`, ... */
  alias: string;
  /** The DPS name. */
  description: string;
}

export const PARTITION_TYPE_INFO: readonly PartitionTypeInfo[] = [
  ["ESP", "esp", "EFI System Partition"],
  ["XBOOTLDR", "xbootldr", "Extended Boot Loader Partition"],
  ["ROOT_X86_64", "root-x86-64", "Root Partition (amd64/x86_64)"],
  ["ROOT_VERITY_X86_64", "root-verity-x86-64", "Root Verity Partition (amd64/x86_64)"],
  ["ROOT_ARM64", "root-arm64", "Root Partition (64-bit ARM/AArch64)"],
  ["ROOT_VERITY_ARM64", "root-verity-arm64", "Root Verity Partition (64-bit ARM/AArch64)"],
  ["USR_X86_64", "usr-x86-64", "/usr/ Partition (amd64/x86_64)"],
  ["USR_VERITY_X86_64", "usr-verity-x86-64", "/usr/ Verity Partition (amd64/x86_64)"],
  ["USR_ARM64", "usr-arm64", "/usr/ Partition (64-bit ARM/AArch64)"],
  ["USR_VERITY_ARM64", "usr-verity-arm64", "/usr/ Verity Partition (64-bit ARM/AArch64)"],
  ["VAR", "var", "Variable Data Partition"],
  ["HOME", "home", "Home Partition"],
  ["SRV", "srv", "Server Data Partition"],
  ["TMP", "tmp", "Temporary Data Partition"],
  ["SWAP", "swap", "Swap"],
  ["LINUX_GENERIC", "linux", "Generic Linux Data Partition"],
].map(([key, alias, description]) => ({
  key: key as PartitionTypeKey,
  guid: PARTITION_TYPES[key as PartitionTypeKey],
  alias: alias as string,
  description: description as string,
}));

/** What we know of a type GUID, or undefined for one we do not name. */
export function partitionTypeInfo(typeGuid: string): PartitionTypeInfo | undefined {
  const g = typeGuid.toUpperCase();
  return PARTITION_TYPE_INFO.find((t) => t.guid === g);
}

/**
 * A type given by alias (`root-x86-64`), constant name (`ROOT_X86_64`) or
 * GUID; the uppercase GUID, or undefined when it is none of these.
 */
export function resolvePartitionType(nameOrGuid: string): string | undefined {
  if (isGuid(nameOrGuid)) return nameOrGuid.toUpperCase();
  const n = nameOrGuid.toLowerCase();
  return PARTITION_TYPE_INFO.find((t) => t.alias === n || t.key.toLowerCase() === n)?.guid;
}
