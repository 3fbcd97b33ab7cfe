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
