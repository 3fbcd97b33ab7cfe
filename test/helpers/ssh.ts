/** The SSH helpers live in qemu/ssh.ts (the host demo and bench use them too). */
export * from "../../qemu/ssh.ts";
