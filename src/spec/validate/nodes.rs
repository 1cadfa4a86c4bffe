//! The [[nodes]] tables: names, roles, MACs, disks, and the control-plane count.

use super::*;

impl Validator<'_> {
    pub(super) fn nodes(&mut self, raw: &RawCluster) -> Vec<(Option<Range<usize>>, Option<Node>)> {
        if raw.nodes.is_empty() {
            self.error(
                "nodes",
                None,
                "the cluster has no nodes",
                "add one [[nodes]] table per machine, with name, role, ip and mac",
            );
        }
        let mut names: HashMap<String, String> = HashMap::new();
        let mut macs: HashMap<String, String> = HashMap::new();
        let mut disks: HashMap<String, String> = HashMap::new();
        let default_wipe = raw.storage.as_ref().and_then(|s| s.get_ref().wipe.as_ref());
        let default_wipe = default_wipe
            .and_then(|w| self.wipe(w, "storage.wipe"))
            .unwrap_or(WipePolicy::IfNotOsd);

        let mut out = Vec::new();
        for (i, node) in raw.nodes.iter().enumerate() {
            let p = |f: &str| format!("nodes[{i}].{f}");
            let n = node.get_ref();
            let name = self
                .required(&n.name, &p("name"), span(node), "name = \"node1\"")
                .and_then(|v| self.dns_label(v, &p("name")).map(|s| (s, v)));
            if let Some((name, v)) = &name
                && let Some(first) = names.insert(name.clone(), p("name"))
            {
                self.error(
                    &p("name"),
                    span(v),
                    format!("node name `{name}` is already used by {first}"),
                    "give every node its own name",
                );
            }
            let role = match &n.role {
                None => {
                    self.error(
                        &p("role"),
                        span(node),
                        "missing required field `role`",
                        "add `role = \"control-plane\"` or `role = \"worker\"`",
                    );
                    None
                }
                Some(r) => self.choice(
                    r,
                    &p("role"),
                    &[("control-plane", Role::ControlPlane), ("worker", Role::Worker)],
                ),
            };
            let ip = self
                .required(&n.ip, &p("ip"), span(node), "ip = \"192.168.1.21\"")
                .and_then(|v| self.ipv4(v, &p("ip")));
            if let (Some(ip), Some(v)) = (ip, &n.ip) {
                self.claim(ip, &p("ip"), span(v));
            }
            let mac = self
                .required(&n.mac, &p("mac"), span(node), "mac = \"aa:bb:cc:dd:ee:01\"")
                .and_then(|v| self.mac(v, &p("mac")));
            if let (Some(mac), Some(v)) = (&mac, &n.mac)
                && let Some(first) = macs.insert(mac.clone(), p("mac"))
            {
                self.error(
                    &p("mac"),
                    span(v),
                    format!("MAC address {mac} is already used by {first}"),
                    "each node's network card has its own MAC; copy it from the PC's BIOS or label",
                );
            }
            let wipe = n.wipe.as_ref().map(|w| self.wipe(w, &p("wipe")));
            let disk = match &n.disk {
                None => {
                    if let Some(w) = &n.wipe {
                        self.warn(&p("wipe"), span(w), "`wipe` has no effect on a node without `disk`", "remove it, or add the node's disk");
                    }
                    Some(None)
                }
                Some(d) => self.disk(d, &p("disk")).map(|by_id| {
                    if let Some(first) = disks.insert(by_id.clone(), p("disk")) {
                        self.warn(&p("disk"), span(d), format!("the same disk name is also given for {first}"), "by-id names carry the disk's serial number, so two machines rarely share one; check that this is not a copy-paste mistake");
                    }
                    Some(Disk { by_id, wipe: wipe.flatten().unwrap_or(default_wipe) })
                }),
            };
            let valid = match (name, role, ip, mac, disk) {
                (Some((name, _)), Some(role), Some(ip), Some(mac), Some(disk)) => Some(Node {
                    name,
                    role,
                    ip,
                    mac,
                    disk,
                }),
                _ => None,
            };
            out.push((span(node), valid));
        }
        out
    }

    pub(super) fn disk(&mut self, value: &S<String>, path: &str) -> Option<String> {
        const PREFIX: &str = "/dev/disk/by-id/";
        let s = value.get_ref();
        let Some(id) = s.strip_prefix(PREFIX) else {
            let help = if s.starts_with("/dev/sd") || s.starts_with("/dev/nvme") || s.starts_with("/dev/vd") {
                "kernel names like /dev/sda change between boots (and the USB stick may take sda); \
                 run `ls -l /dev/disk/by-id/` on the machine and use the name that points at the SATA disk"
            } else {
                "give the whole disk as /dev/disk/by-id/<name>, e.g. \"/dev/disk/by-id/ata-ST2000DM008-2FR102_ZFL0A1B2\""
            };
            self.error(path, span(value), format!("`{s}` is not under {PREFIX}"), help);
            return None;
        };
        if id.is_empty() || id.contains('/') || id == "." || id == ".." || id.chars().any(char::is_whitespace) {
            self.error(
                path,
                span(value),
                format!("`{s}` is not a disk name"),
                "use the single file name shown by `ls /dev/disk/by-id/`",
            );
            return None;
        }
        if let Some((_, n)) = id.rsplit_once("-part")
            && !n.is_empty()
            && n.chars().all(|c| c.is_ascii_digit())
        {
            let whole = &s[..s.len() - n.len() - 5];
            self.error(
                path,
                span(value),
                format!("`{s}` names a partition, not a disk"),
                format!("ceph takes the whole disk: use \"{whole}\""),
            );
            return None;
        }
        if id.starts_with("usb-") {
            self.warn(
                path,
                span(value),
                "this disk is attached over USB",
                "the boot stick is also a USB device; make sure this names the SATA data disk, not the stick",
            );
        }
        Some(s.clone())
    }

    pub(super) fn mac(&mut self, value: &S<String>, path: &str) -> Option<String> {
        let s = value.get_ref().trim().to_ascii_lowercase().replace('-', ":");
        let parts: Vec<&str> = s.split(':').collect();
        let well_formed = parts.len() == 6
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
        if !well_formed {
            self.error(path, span(value), format!("`{}` is not a MAC address", value.get_ref()), "write six hex pairs separated by colons, e.g. \"a4:bb:6d:12:34:56\" (`ip link` on the machine shows it)");
            return None;
        }
        let first = u8::from_str_radix(parts[0], 16).ok()?;
        if first & 1 == 1 {
            self.error(
                path,
                span(value),
                format!("{s} is a multicast address, not a network card's"),
                "copy the MAC of the machine's Ethernet port (`ip link` shows it as link/ether)",
            );
            return None;
        }
        if s == "00:00:00:00:00:00" {
            self.error(
                path,
                span(value),
                "the all-zero MAC is not a network card's",
                "copy the MAC of the machine's Ethernet port",
            );
            return None;
        }
        Some(s)
    }

    pub(super) fn control_plane_count(&mut self, nodes: &[(Option<Range<usize>>, Option<Node>)], raw: &RawCluster) {
        let cps = nodes
            .iter()
            .filter(|(_, n)| n.as_ref().is_some_and(|n| n.role == Role::ControlPlane))
            .count();
        // With a node already invalid the counts would mislead; its own error comes first.
        if nodes.iter().any(|(_, n)| n.is_none()) {
            return;
        }
        let at = raw.nodes.first().map(|n| n.span());
        if cps == 0 && !nodes.is_empty() {
            self.error(
                "nodes",
                at,
                "no node has role = \"control-plane\"",
                "make the first node (or three nodes, for high availability) role = \"control-plane\"",
            );
        } else if cps > 7 {
            self.error(
                "nodes",
                at,
                format!("{cps} control-plane nodes: etcd slows down past 7 members"),
                "use 3 or 5 control-plane nodes and make the others role = \"worker\"",
            );
        } else if cps > 1 && cps % 2 == 0 {
            self.error(
                "nodes",
                at,
                format!("{cps} control-plane nodes: etcd needs an odd number to keep a majority"),
                format!(
                    "use {} or {} control-plane nodes; make the others role = \"worker\"",
                    cps - 1,
                    cps + 1
                ),
            );
        } else if cps == 1 {
            self.warn(
                "nodes",
                at,
                "one control-plane node is not highly available: if it is down, the API is down",
                "fine for a lab; for HA make three nodes role = \"control-plane\"",
            );
        }
    }
}
