// What Vm.start hands QEMU, as QEMU itself reports it (QMP), for a blank
// qcow2 boot disk with a seed drive and hostfwds: no OS boots, the VM is
// stopped as soon as the answers are in.
import { execFileSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { Vm } from "../../../qemu/vm.ts";
import { EXIT_CODES } from "../../../src/cli/exit-codes.ts";
import { abforge } from "../../helpers/cli.ts";
import { freePort } from "../../helpers/net.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-attach-");
let vm: Vm | undefined;

afterEach(async () => {
  await vm?.kill();
  vm = undefined;
});

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

interface BlockInfo {
  device: string;
  inserted?: { drv: string; ro: boolean; file: string };
}

describe("QEMU as Vm.start and abforge qemu ask for it", () => {
  it("boots a qcow2 disk as qcow2, attaches the seed read-only and listens on the forwarded ports", async () => {
    const disk = join(dir, "disk.qcow2");
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", disk, "64M"]);
    const userData = join(dir, "user-data");
    writeFileSync(userData, "#cloud-config\nhostname: attach\n");
    const [sshPort, webPort] = [await freePort(), await freePort()];
    vm = await Vm.start({
      disk,
      userData,
      sshPort,
      hostForwards: [{ hostPort: webPort, guestPort: 8080 }],
      varsPath: join(dir, "vars.fd"),
    });
    expect(vm.options.diskFormat).toBe("qcow2");
    const seed = vm.options.seedDisk!;
    expect(existsSync(seed)).toBe(true);
    const blocks = (await vm.qmp("query-block")) as BlockInfo[];
    const byId = new Map(blocks.map((b) => [b.device, b.inserted]));
    expect(byId.get("disk0")).toMatchObject({ drv: "qcow2", ro: false, file: disk });
    expect(byId.get("seed")).toMatchObject({ drv: "raw", ro: true, file: seed });
    const usernet = (await vm.qmp("human-monitor-command", {
      "command-line": "info usernet",
    })) as string;
    expect(usernet).toMatch(
      new RegExp(
        `HOST_FORWARD\\]\\s+\\d+\\s+127\\.0\\.0\\.1\\s+${sshPort}\\s+10\\.0\\.2\\.15\\s+22`,
      ),
    );
    expect(usernet).toMatch(
      new RegExp(
        `HOST_FORWARD\\]\\s+\\d+\\s+127\\.0\\.0\\.1\\s+${webPort}\\s+10\\.0\\.2\\.15\\s+8080`,
      ),
    );
    expect(await canConnect(sshPort)).toBe(true);
    await vm.powerOff();
    // the seed lived in the VM's temp directory, removed with it
    expect(existsSync(seed)).toBe(false);
  });

  it("abforge qemu passes the format, seed and forwards on (stopped by --timeout)", async () => {
    const disk = join(dir, "cli.qcow2");
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", disk, "64M"]);
    const userData = join(dir, "cli-user-data");
    writeFileSync(userData, "#!/bin/sh\necho hi\n");
    const sshPort = await freePort();
    const r = await abforge([
      "qemu",
      disk,
      "--user-data",
      userData,
      "--ssh-port",
      String(sshPort),
      "--forward",
      `${await freePort()}:8080`,
      "--timeout",
      "2",
    ]);
    expect(r.code, r.stderr).toBe(EXIT_CODES.QEMU_TIMEOUT);
    const started = r.stderr
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === "VM started");
    expect(started).toMatchObject({ format: "qcow2", sshPort, seed: true });
  });
});
