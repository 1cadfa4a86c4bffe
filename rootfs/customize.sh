#!/bin/sh
# mmdebstrap --customize-hook: runs once on the finished base tree ($1), before it is
# packed. Everything node-specific comes later from the CIDATA partition; files that are
# the same on every node come from overlays/ and the rendered common files.
set -eu
root="$1"

# Identity is per node: cloud-init sets the hostname and makes new SSH host keys;
# systemd makes a machine-id on first boot.
: > "$root/etc/hostname"
: > "$root/etc/machine-id"
rm -f "$root"/etc/ssh/ssh_host_*_key "$root"/etc/ssh/ssh_host_*_key.pub

# A server has no sound, cameras, radios or GPUs worth a driver: drop their modules (they
# are most of the kernel's weight), then rebuild the module index and the initramfs.
for kver in "$root"/usr/lib/modules/*; do
    [ -d "$kver/kernel" ] || continue
    for dir in sound drivers/media drivers/gpu/drm/amd drivers/gpu/drm/nouveau drivers/gpu/drm/radeon \
        drivers/gpu/drm/i915 drivers/gpu/drm/xe drivers/infiniband drivers/net/wireless drivers/bluetooth \
        drivers/staging drivers/iio drivers/isdn drivers/input/joystick drivers/input/touchscreen \
        drivers/net/can drivers/hwtracing net/wireless net/mac80211 net/bluetooth; do
        rm -rf "${kver:?}/kernel/$dir"
    done
    chroot "$root" depmod -a "$(basename "$kver")"
done
chroot "$root" update-initramfs -u -k all

# The nodes resolve through systemd-resolved, which netplan's nameservers feed.
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service

# apt's lists are not needed on an appliance; they are fetched again by `apt update`.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
