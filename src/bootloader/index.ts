/**
 * The bootloader module's public face: the GRUB environment block codec, the
 * A/B boot state and its transitions, the FAT32 locator and BootDisk.
 * See README.md for the formats and procedures.
 */

export * from "./bootdisk.ts";
export * from "./env.ts";
export * from "./errors.ts";
export * from "./esp.ts";
export * from "./fat.ts";
export * from "./grub.ts";
export * from "./openpgp.ts";
export * from "./secureboot.ts";
export * from "./state.ts";
