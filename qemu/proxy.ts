/**
 * QEMU's guestfwd `cmd:` backend starts this once per guest connection, with
 * the connection on stdin/stdout; it carries the bytes to 127.0.0.1:PORT on the
 * host and back. This is the guest's only way out of `restrict=on` networking.
 */
import { connect } from "node:net";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write(`proxy: bad port ${process.argv[2]}\n`);
  process.exit(2);
}
const socket = connect({ host: "127.0.0.1", port });
process.stdin.pipe(socket);
socket.pipe(process.stdout);
socket.on("error", () => process.exit(1));
socket.on("close", () => process.exit(0));
process.stdin.on("end", () => socket.end());
