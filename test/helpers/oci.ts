/** The OCI archive maker lives in qemu/oci.ts (the host demo and bench use it too). */
export * from "../../qemu/oci.ts";
