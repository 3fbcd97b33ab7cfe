// A release that never comes up, for the fleet end-to-end test: run as an agent's
// `--reboot-command` on an image file, it does what GRUB does with a slot whose kernel
// panics at every boot (src/bootloader `grubBoot`: each boot takes a try) until GRUB
// falls back to the good slot, and writes that boot state once.
// Usage: node broken-boot.ts DISK
import { BootDisk, grubBoot, nextBootSlot } from "../../../src/bootloader/index.ts";

const disk = process.argv[2];
if (!disk) throw new Error("usage: broken-boot.ts DISK");
const d = await BootDisk.open(disk);
try {
  let s = await d.readState();
  for (let boots = 0; boots < 10; boots++) {
    const next = nextBootSlot(s);
    if (next === null || s.slots[next].good) break;
    s = grubBoot(s).state;
  }
  await d.writeState(s);
} finally {
  await d.close();
}
