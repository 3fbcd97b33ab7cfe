/** The free-port helper for tests: qemu/net.ts. */
export { freePort } from "../../qemu/net.ts";
