import { type Command, InvalidArgumentError } from "commander";
import { logger } from "../log.ts";
import { action, intOption, portOption } from "./command.ts";

interface QemuOptions {
  serial?: string;
  timeout?: number;
  mem: number;
  kvm?: boolean;
  repoPort?: number;
  repoAddress: string;
  userData?: string;
  metaData?: string;
  sshPort?: number;
  forward?: { hostPort: number; guestPort: number }[];
  secureBoot?: boolean;
}

const port = portOption("--forward", { anyPort: false });

/** `--forward HOSTPORT:GUESTPORT`, repeatable: each one is added to the list. */
function forwardOption(
  value: string,
  previous: { hostPort: number; guestPort: number }[] = [],
): { hostPort: number; guestPort: number }[] {
  const m = /^(\d+):(\d+)$/.exec(value);
  if (!m) {
    throw new InvalidArgumentError(
      `--forward must be HOSTPORT:GUESTPORT (TCP ports, 1-65535), got "${value}"`,
    );
  }
  return [...previous, { hostPort: port(m[1]!), guestPort: port(m[2]!) }];
}

export function register(program: Command): void {
  program
    .command("qemu")
    .description(
      "boot a disk image under QEMU (OVMF, virtio disk, serial console on stdout); exit 0 when the VM powers off",
    )
    .argument(
      "<disk>",
      "the GPT disk image to boot: raw, or qcow2 (told apart by the file's magic)",
    )
    .option("--serial <file>", "also write the serial console to this file")
    .option(
      "--timeout <seconds>",
      "power the VM off after this many seconds (exit status QEMU_TIMEOUT)",
      intOption("--timeout"),
    )
    .option("--mem <MB>", "guest memory in MiB", intOption("--mem"), 1024)
    .option("--kvm", "use KVM instead of TCG (KVM guests hang on some hosts)")
    .option(
      "--secure-boot",
      "Secure Boot enforced: OVMF_CODE_4M.secboot.fd (q35 with SMM) and a copy of OVMF_VARS_4M.snakeoil.fd beside the disk (Debian's test key in db: boots images built with secureBoot and /usr/share/ovmf/PkKek-1-snakeoil.*)",
    )
    .option(
      "--repo-port <port>",
      "carry the guest's update-repository address to 127.0.0.1:PORT (1-65535)",
      portOption("--repo-port", { anyPort: false }),
    )
    .option(
      "--repo-address <host:port>",
      "the address the image's agent uses for its repository (as in the demo image's agent config)",
      "10.0.2.100:80",
    )
    .option(
      "--user-data <file>",
      "cloud-init user-data: attached on a NoCloud seed drive (FAT, label CIDATA, read-only); at most 1 MiB, starting with #cloud-config, #!, #include, #cloud-boothook or a multipart MIME header",
    )
    .option(
      "--meta-data <file>",
      "meta-data for the seed drive (default: instance-id iid-<sha256 of the user-data, 16 hex digits>)",
    )
    .option(
      "--ssh-port <port>",
      "forward 127.0.0.1:PORT to the guest's SSH port 22 (1-65535)",
      portOption("--ssh-port", { anyPort: false }),
    )
    .option(
      "--forward <hostport:guestport>",
      "forward 127.0.0.1:HOSTPORT to the guest's TCP GUESTPORT; repeatable",
      forwardOption,
    )
    .addHelpText(
      "after",
      `
Examples:
  abforge qemu out/disk.img --timeout 120
  abforge qemu out/disk.img --secure-boot     # an image built with secureBoot: { key, cert }

With --secure-boot the firmware refuses a GRUB image it cannot verify against db
(src/bootloader/README.md, "Secure Boot").`,
    )
    .action(
      action(async (disk: string, opts: QemuOptions) => {
        // The harness lives outside src/ and is not shipped in images: load it
        // only when this command runs.
        const { QemuError } = await import("../../qemu/errors.ts");
        const { Vm } = await import("../../qemu/vm.ts");
        const log = logger().child({ module: "qemu" });
        const [guestAddress, guestPortText = "80", ...rest] = opts.repoAddress.split(":");
        const guestPort = /^\d{1,5}$/.test(guestPortText) ? Number(guestPortText) : 0;
        if (!guestAddress || rest.length > 0 || guestPort < 1 || guestPort > 65535) {
          throw new QemuError(
            "QEMU_FAILED",
            `--repo-address must be HOST:PORT with a port of 1-65535, got "${opts.repoAddress}"`,
          );
        }
        if (opts.metaData !== undefined && opts.userData === undefined) {
          throw new QemuError("QEMU_BAD_SEED", "--meta-data needs --user-data");
        }
        const vm = await Vm.start({
          disk,
          ...(opts.userData !== undefined ? { userData: opts.userData } : {}),
          ...(opts.metaData !== undefined ? { metaData: opts.metaData } : {}),
          ...(opts.sshPort !== undefined ? { sshPort: opts.sshPort } : {}),
          hostForwards: opts.forward ?? [],
          serialLog: opts.serial,
          memMb: opts.mem,
          kvm: opts.kvm,
          secureBoot: opts.secureBoot === true,
          forward:
            opts.repoPort === undefined
              ? undefined
              : { guestAddress, guestPort, hostPort: opts.repoPort },
          onConsole: (text) => process.stdout.write(text),
        });
        log.info(
          {
            disk,
            format: vm.options.diskFormat,
            kvm: Boolean(opts.kvm),
            repoPort: opts.repoPort,
            sshPort: opts.sshPort,
            forward: opts.forward,
            seed: opts.userData !== undefined,
            secureBoot: opts.secureBoot === true,
          },
          "VM started",
        );
        process.stdin.on("data", (d) => vm.process.stdin?.write(d));
        const stop = () => void vm.powerOff();
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
        let timedOut = false;
        const timer =
          opts.timeout === undefined
            ? undefined
            : setTimeout(() => {
                timedOut = true;
                void vm.powerOff();
              }, opts.timeout * 1000);
        const exit = await vm.exited;
        if (timer) clearTimeout(timer);
        process.stdin.pause();
        // a terminal or a pipe holds the event loop; a file or /dev/null has no unref
        (process.stdin as { unref?: () => void }).unref?.();
        if (timedOut) {
          throw new QemuError(
            "QEMU_TIMEOUT",
            `VM on ${disk} did not power off within ${opts.timeout} s`,
          );
        }
        if (exit.code !== 0) {
          throw new QemuError(
            "QEMU_FAILED",
            `QEMU exited with ${exit.signal ?? `status ${exit.code}`} on ${disk}`,
          );
        }
        log.info("VM powered off");
        return 0;
      }),
    );
}
