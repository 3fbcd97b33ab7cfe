/**
 * Where things are in an abforge image (README.md, "Partitions" and "Paths"):
 * the slot names, the GPT partition names, and the paths inside a slot's root
 * filesystem that the build writes and the agent reads.
 */

export type SlotName = "A" | "B";
export const SLOT_NAMES: readonly SlotName[] = ["A", "B"];

export function isSlotName(s: string): s is SlotName {
  return s === "A" || s === "B";
}

export function otherSlot(slot: SlotName): SlotName {
  return slot === "A" ? "B" : "A";
}

/** GRUB's script counts tries down one digit at a time: a slot gets 1-9 tries. */
export const MAX_TRIES = 9;
/**
 * Unconfirmed boots of a good slot before GRUB falls back to the other good
 * slot (spec `update.goodSlotTries`, boot state `good_tries`), by default.
 */
export const DEFAULT_GOOD_TRIES = 3;

// GPT partition names, in the order of the disk: 1 ESP, 2 slot A, 3 slot B, 4 state.
export const ESP_PARTITION_NAME = "esp";
export const SLOT_PARTITION_PREFIX = "abforge-";
export const STATE_PARTITION_NAME = "state";
/** The ext4 label of the state partition's filesystem. */
export const STATE_FS_LABEL = "abforge-state";

/** `abforge-A` / `abforge-B`. */
export function slotPartitionName(slot: SlotName): string {
  return `${SLOT_PARTITION_PREFIX}${slot}`;
}

// Paths inside a slot's root filesystem (absolute, as the running host sees them).
/** The agent's code and its npm packages. */
export const AGENT_DIR = "/usr/lib/abforge";
/** The agent config the build writes from the spec's `update:` section. */
export const AGENT_CONFIG_PATH = "/etc/abforge/agent.yaml";
/** The public keys the image trusts for updates, `<keyId>.pub` (SPKI PEM). */
export const KEYS_DIR = "/etc/abforge/keys";
/** The image's identity: name, version, compatible (README.md, "Release"). */
export const RELEASE_PATH = "/etc/abforge/release.json";
/** The agent's state (on the state partition, bound on /var). */
export const STATE_DIR = "/var/lib/abforge";
