#!/bin/sh
# Build the tiny guest of Stratus from Debian packages: the boot kit every QEMU host carries
# (an uncompressed kernel and a busybox initramfs) and the gallery image `tiny` (a qcow2 of an
# ext4 root filesystem).
#
#   deploy/images/build-tiny.sh OUT_DIR
#
# OUT_DIR receives:
#   vmlinux        the Debian cloud kernel, uncompressed (boots ~1 s faster under TCG than
#                  vmlinuz; when lz4 is missing, vmlinuz is copied under this name instead)
#   initramfs.gz   busybox-static + the virtio (disk, NIC) and ACPI modules + /init: it mounts
#                  the OS disk (/dev/vda, ext4) and switches to it
#   tiny.qcow2     the image: busybox + /sbin/init, which counts boots on the disk, starts acpid
#                  (ACPI power-off), brings eth0 up by DHCP (udhcpc), serves a page naming the
#                  VM on port 80 (busybox httpd) and prints "STRATUS-READY ..." on the serial
#                  console
#   build.json     what was built (kernel package, sizes, sha256 of the image)
#
# Needs (Debian 12): apt-get install -y --no-install-recommends \
#     qemu-utils busybox-static e2fsprogs lz4
# and apt-get access to a Debian mirror (the kernel is fetched with apt-get download).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-tiny.sh OUT_DIR}
image_mib=${STRATUS_TINY_IMAGE_MIB:-64}
kernel_pkg=${STRATUS_KERNEL_PACKAGE:-}

missing=""
for tool in qemu-img mke2fs gzip apt-get dpkg; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || missing="$missing busybox"
if [ -n "$missing" ]; then
    echo "build-tiny: missing:$missing" >&2
    echo "install them with:" >&2
    echo "  apt-get install -y --no-install-recommends qemu-utils busybox-static e2fsprogs lz4" >&2
    exit 2
fi
if ldd "$busybox" >/dev/null 2>&1; then
    echo "build-tiny: $busybox is dynamically linked; the guest needs busybox-static:" >&2
    echo "  apt-get install -y --no-install-recommends busybox-static" >&2
    exit 2
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- the kernel: the newest linux-image-*-cloud-amd64 the mirror offers -----------------------
if [ -z "$kernel_pkg" ]; then
    kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)
fi
if [ -z "$kernel_pkg" ]; then
    echo "build-tiny: no linux-image-cloud-amd64 in the apt lists; run apt-get update" >&2
    exit 2
fi
(cd "$work" && apt-get download "$kernel_pkg" >/dev/null 2>&1) || {
    echo "build-tiny: apt-get download $kernel_pkg failed" >&2
    exit 2
}
dpkg -x "$work"/linux-image-*.deb "$work/kernel"
vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-*)
moddir=$(ls -d "$work"/kernel/lib/modules/*)

# An LZ4 kernel: the payload starts at the LZ4 legacy magic 02 21 4c 18.
if command -v lz4 >/dev/null 2>&1 \
    && offset=$(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | head -1 | cut -d: -f1) \
    && [ -n "$offset" ]; then
    tail -c +"$((offset + 1))" "$vmlinuz" | lz4 -dc >"$work/vmlinux" 2>/dev/null || true
fi
if [ -s "$work/vmlinux" ] && head -c 4 "$work/vmlinux" | grep -q 'ELF'; then
    kernel_kind=vmlinux
else
    echo "build-tiny: cannot extract an uncompressed kernel (install lz4); using vmlinuz" >&2
    cp "$vmlinuz" "$work/vmlinux"
    kernel_kind=vmlinuz
fi

# --- the initramfs ------------------------------------------------------------------------------
ramfs="$work/initramfs"
mkdir -p "$ramfs/bin" "$ramfs/lib/modules" "$ramfs/proc" "$ramfs/sys" "$ramfs/dev" \
    "$ramfs/newroot"
cp "$busybox" "$ramfs/bin/busybox"
for applet in sh mount insmod sleep switch_root poweroff echo grep; do
    ln -s busybox "$ramfs/bin/$applet"
done
for module in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
    virtio_blk failover net_failover virtio_net button evdev; do
    path=$(find "$moddir" -name "$module.ko" | head -1)
    [ -n "$path" ] || { echo "build-tiny: module $module not in $kernel_pkg" >&2; exit 2; }
    cp "$path" "$ramfs/lib/modules/"
done
cp "$here/guest/init" "$ramfs/init"
chmod 755 "$ramfs/init"
(cd "$ramfs" && find . | "$busybox" cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initramfs.gz")

# --- the image: an ext4 root filesystem with busybox and the stage-2 init -----------------------
rootfs="$work/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/sbin" "$rootfs/etc/acpi" "$rootfs/etc/udhcpc" "$rootfs/proc" \
    "$rootfs/sys" "$rootfs/dev" "$rootfs/tmp" "$rootfs/var/lib/stratus" "$rootfs/var/run" \
    "$rootfs/var/www"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
cp "$here/guest/rootfs-init" "$rootfs/sbin/init"
cp "$here/guest/power-off" "$rootfs/etc/acpi/power-off"
cp "$here/guest/udhcpc-event" "$rootfs/etc/udhcpc/event"
chmod 755 "$rootfs/sbin/init" "$rootfs/etc/acpi/power-off" "$rootfs/etc/udhcpc/event"
echo "PWRF power-off" >"$rootfs/etc/acpid.conf"
echo "tiny" >"$rootfs/etc/hostname"
mke2fs -q -t ext4 -L tiny -d "$rootfs" "$work/rootfs.img" "${image_mib}M" >/dev/null
qemu-img convert -c -f raw -O qcow2 "$work/rootfs.img" "$work/tiny.qcow2"

# --- publish ------------------------------------------------------------------------------------
mv "$work/vmlinux" "$out/vmlinux"
mv "$work/initramfs.gz" "$out/initramfs.gz"
mv "$work/tiny.qcow2" "$out/tiny.qcow2"
sha=$(sha256sum "$out/tiny.qcow2" | cut -d' ' -f1)
cat >"$out/build.json" <<JSON
{"kernel_package": "$kernel_pkg", "kernel": "$kernel_kind", "image": "tiny.qcow2",
 "image_sha256": "$sha", "image_virtual_mib": $image_mib}
JSON
echo "build-tiny: built $out ($kernel_pkg, $kernel_kind, tiny.qcow2 sha256 $sha)"
