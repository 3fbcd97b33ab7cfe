/** Kernel package and module naming: src/build/README.md, "Kernel and modules". */
import { describe, expect, it } from "vitest";
import { canonicalModuleName, realKernelPackage } from "../../../src/build/kernel.ts";

describe("realKernelPackage", () => {
  it("follows a metapackage to the linux-image-<abi> package it depends on", () => {
    const out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
    expect(realKernelPackage("linux-image-cloud-amd64", out)).toBe(
      "linux-image-6.1.0-56-cloud-amd64",
    );
  });
  it("keeps a package that is already the real one", () => {
    const out =
      "linux-image-6.1.0-56-cloud-amd64\n  PreDepends: kmod\n  Depends: initramfs-tools\n |Depends: linux-initramfs-tool\n";
    expect(realKernelPackage("linux-image-6.1.0-56-cloud-amd64", out)).toBe(
      "linux-image-6.1.0-56-cloud-amd64",
    );
  });
});

describe("canonicalModuleName", () => {
  it("treats - and _ alike and drops the .ko suffixes", () => {
    expect(canonicalModuleName("dm-verity")).toBe("dm_verity");
    expect(canonicalModuleName("dm_verity")).toBe("dm_verity");
    expect(canonicalModuleName("dm-verity.ko")).toBe("dm_verity");
    expect(canonicalModuleName("virtio_blk.ko.xz")).toBe("virtio_blk");
  });
});
