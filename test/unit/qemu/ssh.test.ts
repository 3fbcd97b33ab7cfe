// The SSH test helpers against a real OpenSSH server on a free 127.0.0.1
// port, running as the current user with its own host key and config.
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { userInfo } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../../qemu/net.ts";
import { copyTo, ssh, sshKeyPair, waitForSsh } from "../../../qemu/ssh.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-ssh-");
chmodSync(dir, 0o700);
const user = userInfo().username;
let port: number;
let key: string;
let sshd: ChildProcess | undefined;
let sshdLog = "";

function startSshd(): void {
  // sshd run as root chroots its unprivileged child into /run/sshd (made by
  // the service unit on a host; here, where no unit has run, by the test)
  if (process.getuid?.() === 0) mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  sshd = spawn("/usr/sbin/sshd", ["-D", "-e", "-f", join(dir, "sshd_config"), "-p", String(port)], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  sshd.stderr?.on("data", (d) => {
    sshdLog += d;
  });
}

beforeAll(async () => {
  port = await freePort();
  const pair = await sshKeyPair(dir);
  key = pair.privateKey;
  const hostKey = join(dir, "host");
  writeFileSync(join(dir, "authorized_keys"), `${pair.publicKey}\n`);
  const hostPair = await sshKeyPair(tempDir("abforge-sshd-host-"));
  writeFileSync(hostKey, readFileSync(hostPair.privateKey), { mode: 0o600 });
  writeFileSync(
    join(dir, "sshd_config"),
    [
      "ListenAddress 127.0.0.1",
      `HostKey ${hostKey}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
      `PidFile ${join(dir, "sshd.pid")}`,
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "StrictModes no",
      "UsePAM no",
      "PermitRootLogin prohibit-password",
      "",
    ].join("\n"),
  );
});

afterAll(() => {
  sshd?.kill("SIGTERM");
});

describe("ssh helpers", () => {
  it("makes an ed25519 key pair without a passphrase, and keeps it on a second call", async () => {
    const a = await sshKeyPair(dir);
    expect(a.publicKey).toMatch(/^ssh-ed25519 AAAA\S+ abforge-test$/);
    expect(readFileSync(a.privateKey, "utf8")).toMatch(/^-----BEGIN OPENSSH PRIVATE KEY-----/);
    expect((await sshKeyPair(dir)).publicKey).toBe(a.publicKey);
  });

  it("waitForSsh gives up within its bound while no server listens", async () => {
    await expect(
      waitForSsh(port, key, user, { attempts: 2, totalMs: 20_000, intervalMs: 10 }),
    ).rejects.toThrow(
      new RegExp(
        `ssh ${user}@127\\.0\\.0\\.1:${port} did not succeed within 2 tries or 20000 ms; last: exit 255: .*Connection refused`,
      ),
    );
  });

  it("reaches the server once it listens, runs commands with their status, output and stdin", async () => {
    startSshd();
    const up = await waitForSsh(port, key, user, {
      attempts: 30,
      totalMs: 30_000,
      intervalMs: 200,
      command: "echo ready",
    });
    expect(up.stdout, sshdLog).toBe("ready\n");
    const r = await ssh(port, key, user, "echo out; echo err >&2; exit 3");
    expect(r).toEqual({ code: 3, stdout: "out\n", stderr: "err\n" });
    const piped = await ssh(port, key, user, "tr a-z A-Z", { input: "shout\n" });
    expect(piped.stdout).toBe("SHOUT\n");
  });

  it("copyTo carries a binary file byte for byte, to a path with a quote in it", async () => {
    const local = join(dir, "blob.bin");
    const data = Buffer.alloc(300_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7919) & 0xff;
    writeFileSync(local, data);
    const remote = join(dir, "it's copied.bin");
    await copyTo(port, key, user, local, remote);
    expect(readFileSync(remote).equals(data)).toBe(true);
    await expect(copyTo(port, key, user, local, join(dir, "no/such/dir/x"))).rejects.toThrow(
      /copying .*blob\.bin to .* failed \(exit 1\): .*No such file or directory/,
    );
  });

  it("a key the server does not know is exit 255, never a password prompt", async () => {
    const other = await sshKeyPair(tempDir("abforge-ssh-other-"));
    const r = await ssh(port, other.privateKey, user, "true", { timeoutMs: 30_000 });
    expect(r.code).toBe(255);
    expect(r.stderr).toMatch(/Permission denied \(publickey\)/);
  });
});
