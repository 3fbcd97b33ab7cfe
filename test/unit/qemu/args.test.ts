import { describe, expect, it } from "vitest";
import { Vm } from "../../../qemu/vm.ts";

describe("qemu arguments", () => {
  it("uses TCG, OVMF, a virtio disk and no network by default", () => {
    const args = Vm.args({ disk: "/d/disk.img" }, "/q/qmp.sock", "/d/vars.fd").join(" ");
    expect(args).toContain("-accel tcg");
    expect(args).toContain("file=/usr/share/OVMF/OVMF_CODE_4M.fd");
    expect(args).toContain("if=pflash,format=raw,file=/d/vars.fd");
    expect(args).toContain("file=/d/disk.img,format=raw,if=none,id=disk0");
    expect(args).toContain("virtio-blk-pci,drive=disk0,addr=0x5,bootindex=0");
    expect(args).toContain("-nic none");
    expect(args).not.toContain("-no-reboot");
  });

  it("attaches extra disks before the boot disk in PCI order, none with a bootindex", async () => {
    const args = Vm.args(
      { disk: "/d/boot.img", extraDisks: ["/d/copy.img", "/d/third.img"] },
      "q",
      "v",
    );
    const devices = args.filter(
      (_, i) => args[i - 1] === "-device" && args[i]!.startsWith("virtio-blk"),
    );
    expect(devices).toEqual([
      "virtio-blk-pci,drive=disk0,addr=0x5,bootindex=0",
      "virtio-blk-pci,drive=disk1,addr=0x4",
      "virtio-blk-pci,drive=disk2,addr=0x3",
    ]);
    expect(args).toContain("file=/d/copy.img,format=raw,if=none,id=disk1,cache=unsafe");
    expect(args).toContain("file=/d/third.img,format=raw,if=none,id=disk2,cache=unsafe");
    await expect(
      Vm.start({ disk: "/d/boot.img", extraDisks: ["a", "b", "c", "d"] }),
    ).rejects.toMatchObject({ code: "QEMU_BAD_DISK", message: expect.stringMatching(/at most 3/) });
  });

  it("restricts user networking to one guestfwd to loopback", () => {
    const args = Vm.args(
      {
        disk: "d.img",
        kvm: true,
        forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: 8123 },
      },
      "q",
      "v",
    ).join(" ");
    expect(args).toContain("-accel kvm");
    expect(args).toMatch(
      /user,id=n0,restrict=on,guestfwd=tcp:10\.0\.2\.100:80-cmd:\S+ .*proxy\.ts 8123 /,
    );
  });
});
