import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkHostForwards, detectDiskFormat, Vm } from "../../../qemu/vm.ts";
import { EXIT_CODES, EXIT_USAGE } from "../../../src/cli/exit-codes.ts";
import { abforge } from "../../helpers/cli.ts";
import { caught } from "../../helpers/errors.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-qemu-args-");

/** The value after each `flag` in an argument list. */
function values(args: readonly string[], flag: string): string[] {
  return args.flatMap((a, i) => (args[i - 1] === flag ? [a] : []));
}

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

  it("boots the Secure Boot firmware with SMM only when asked", () => {
    const sb = Vm.args({ disk: "/d/disk.img", secureBoot: true }, "/q/qmp.sock", "/d/vars.fd");
    expect(values(sb, "-machine")).toEqual(["q35,smm=on"]);
    expect(values(sb, "-global")).toEqual(["driver=cfi.pflash01,property=secure,value=on"]);
    expect(sb.join(" ")).toContain("readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd");
    const plain = Vm.args({ disk: "/d/disk.img" }, "/q/qmp.sock", "/d/vars.fd");
    expect(values(plain, "-machine")).toEqual(["q35"]);
    expect(values(plain, "-global")).toEqual([]);
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

  it("forwards --ssh-port to guest port 22 and each --forward, on 127.0.0.1, with restrict=on kept", () => {
    const args = Vm.args(
      { disk: "d.img", sshPort: 2222, hostForwards: [{ hostPort: 8080, guestPort: 80 }] },
      "q",
      "v",
    );
    expect(values(args, "-netdev")).toEqual([
      "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80",
    ]);
    expect(values(args, "-device")).toContain("virtio-net-pci,netdev=n0,addr=0x6,romfile=");
    expect(args).not.toContain("-nic");
    const both = Vm.args(
      {
        disk: "d.img",
        forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: 8123 },
        sshPort: 2222,
      },
      "q",
      "v",
    );
    expect(values(both, "-netdev")).toHaveLength(1);
    expect(values(both, "-netdev")[0]).toMatch(
      /^user,id=n0,restrict=on,guestfwd=tcp:10\.0\.2\.100:80-cmd:.* 8123,hostfwd=tcp:127\.0\.0\.1:2222-:22$/,
    );
  });

  it("refuses ports outside 1-65535 and a host port forwarded twice", () => {
    for (const [options, message] of [
      [{ sshPort: 0 }, "forward 0:22: the host port must be 1-65535"],
      [
        { hostForwards: [{ hostPort: 8080, guestPort: 65536 }] },
        "forward 8080:65536: the guest port must be 1-65535",
      ],
      [
        { hostForwards: [{ hostPort: 1.5, guestPort: 80 }] },
        "forward 1.5:80: the host port must be 1-65535",
      ],
      [
        { sshPort: 8080, hostForwards: [{ hostPort: 8080, guestPort: 80 }] },
        "host port 8080 is forwarded twice (--ssh-port and --forward share 127.0.0.1)",
      ],
      [
        {
          forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: 8123 },
          hostForwards: [{ hostPort: 8123, guestPort: 80 }],
        },
        "host port 8123 is both the repository the guest reaches and a port forwarded into the guest",
      ],
    ] as const) {
      const err = caught(() => Vm.args({ disk: "d.img", ...options }, "q", "v")) as {
        code: string;
        message: string;
      };
      expect(err.code).toBe("QEMU_BAD_FORWARD");
      expect(err.message).toBe(message);
    }
    expect(
      checkHostForwards({
        disk: "d.img",
        sshPort: 22,
        hostForwards: [{ hostPort: 23, guestPort: 22 }],
      }),
    ).toEqual([
      { hostPort: 22, guestPort: 22 },
      { hostPort: 23, guestPort: 22 },
    ]);
  });

  it("attaches a seed drive read-only after the NIC's slot, without a bootindex", () => {
    const args = Vm.args({ disk: "d.img", seedDisk: "/w/seed.img" }, "q", "v");
    expect(values(args, "-drive")).toContain(
      "file=/w/seed.img,format=raw,if=none,id=seed,readonly=on",
    );
    expect(values(args, "-device")).toContain("virtio-blk-pci,drive=seed,addr=0x7");
    expect(Vm.args({ disk: "d.img" }, "q", "v").join(" ")).not.toContain("id=seed");
  });

  it("tells qcow2 from raw by the magic and passes the format to the boot drive", () => {
    const qcow2 = join(dir, "disk.qcow2");
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", qcow2, "64M"]);
    const raw = join(dir, "disk.img");
    writeFileSync(raw, Buffer.alloc(4096));
    const tiny = join(dir, "tiny.img");
    writeFileSync(tiny, "QF");
    expect(detectDiskFormat(qcow2)).toBe("qcow2");
    expect(detectDiskFormat(raw)).toBe("raw");
    expect(detectDiskFormat(tiny)).toBe("raw");
    const args = Vm.args({ disk: qcow2, diskFormat: "qcow2" }, "q", "v");
    expect(values(args, "-drive")).toContain(
      `file=${qcow2},format=qcow2,if=none,id=disk0,cache=unsafe`,
    );
  });
});

describe("abforge qemu: seed and forward options", () => {
  const disk = join(dir, "empty.img");
  writeFileSync(disk, Buffer.alloc(512));

  it("--ssh-port and --forward out of range or malformed are usage errors", async () => {
    for (const [extra, message] of [
      [["--ssh-port", "0"], /--ssh-port must be a TCP port, 1-65535, got "0"/],
      [
        ["--forward", "8080"],
        /--forward must be HOSTPORT:GUESTPORT \(TCP ports, 1-65535\), got "8080"/,
      ],
      [["--forward", "8080:70000"], /--forward must be a TCP port, 1-65535, got "70000"/],
      [["--forward", "a:80"], /--forward must be HOSTPORT:GUESTPORT/],
    ] as const) {
      const r = await abforge(["qemu", disk, ...extra]);
      expect(r.code, extra.join(" ")).toBe(EXIT_USAGE);
      expect(r.stderr).toMatch(message);
    }
  });

  it("a host port given twice is QEMU_BAD_FORWARD before QEMU starts", async () => {
    const r = await abforge([
      "qemu",
      disk,
      "--ssh-port",
      "2222",
      "--forward",
      "2222:80",
      "--forward",
      "8080:80",
    ]);
    expect(r.code, r.stderr).toBe(EXIT_CODES.QEMU_BAD_FORWARD);
    expect(r.stderr).toContain("host port 2222 is forwarded twice");
  });

  it("bad user-data is QEMU_BAD_SEED naming the file, before QEMU starts", async () => {
    const userData = join(dir, "user-data.yaml");
    writeFileSync(userData, "hostname: a\n");
    const r = await abforge(["qemu", disk, "--user-data", userData]);
    expect(r.code, r.stderr).toBe(EXIT_CODES.QEMU_BAD_SEED);
    expect(r.stderr).toContain(
      `abforge: user-data ${userData} starts with "hostname: a", not a header cloud-init acts on`,
    );
    const m = await abforge(["qemu", disk, "--meta-data", userData]);
    expect(m.code).toBe(EXIT_CODES.QEMU_BAD_SEED);
    expect(m.stderr).toContain("--meta-data needs --user-data");
  });
});
