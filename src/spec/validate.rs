//! RawCluster → Cluster. Every rule is checked and every failure recorded in the report;
//! nothing stops at the first problem. A `None` result means the report has errors.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;

use base64::Engine as _;
use ipnet::Ipv4Net;

use super::model::*;
use super::raw::*;
use crate::diag::{Diagnostic, Report};

pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DEFAULT_DNS_DOMAIN: &str = "cluster.local";

/// flannel gives every node a /24 out of the pod CIDR.
const FLANNEL_NODE_PREFIX: u8 = 24;
/// kube-apiserver refuses IPv4 service ranges larger than this.
const MAX_SERVICE_PREFIX: u8 = 12;

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

pub fn validate(raw: &RawCluster, known_versions: &[String], report: &mut Report) -> Option<Cluster> {
    let mut v = Validator {
        report,
        addresses: HashMap::new(),
    };
    let cluster = v.cluster(raw, known_versions);
    if v.report.has_errors() { None } else { cluster }
}

struct Validator<'r> {
    report: &'r mut Report,
    /// Every address claimed so far, to report reuse (`path`, span of first use).
    addresses: HashMap<Ipv4Addr, (String, Option<Range<usize>>)>,
}

fn span<T>(s: &S<T>) -> Option<Range<usize>> {
    Some(s.span())
}

impl Validator<'_> {
    fn error(&mut self, path: &str, span: Option<Range<usize>>, msg: impl Into<String>, help: impl Into<String>) {
        self.report.push(Diagnostic::error(path, span, msg).help(help));
    }

    fn warn(&mut self, path: &str, span: Option<Range<usize>>, msg: impl Into<String>, help: impl Into<String>) {
        self.report.push(Diagnostic::warning(path, span, msg).help(help));
    }

    fn required<'a, T>(
        &mut self,
        value: &'a Option<S<T>>,
        path: &str,
        parent: Option<Range<usize>>,
        example: &str,
    ) -> Option<&'a S<T>> {
        if value.is_none() {
            let key = path.rsplit('.').next().unwrap_or(path);
            self.error(
                path,
                parent,
                format!("missing required field `{key}`"),
                format!("add `{example}`"),
            );
        }
        value.as_ref()
    }

    fn cluster(&mut self, raw: &RawCluster, known_versions: &[String]) -> Option<Cluster> {
        let section = self.section(
            &raw.cluster,
            "cluster",
            "[cluster]\nname = \"homelab\"\nkubernetes_version = \"...\"",
        );
        let network = self.section(&raw.network, "network", "[network]\nsubnet = \"192.168.1.0/24\"\n...");
        let admin = self.section(
            &raw.admin,
            "admin",
            "[admin]\nuser = \"kube\"\nssh_authorized_keys = [\"ssh-ed25519 ...\"]",
        );

        let name = section.and_then(|s| self.cluster_name(s));
        let version = section.and_then(|s| self.version(s, known_versions));
        let dns_domain = section.and_then(|s| match &s.get_ref().dns_domain {
            None => Some(DEFAULT_DNS_DOMAIN.to_string()),
            Some(d) => self.dns_name(d, "cluster.dns_domain"),
        });
        let timezone = section
            .and_then(|s| s.get_ref().timezone.as_ref())
            .and_then(|tz| self.timezone(tz));
        let nodes = self.nodes(raw);
        let network = network.and_then(|n| self.network(n, &nodes));
        let admin = admin.and_then(|a| self.admin(a));
        let cni = self.cni(&raw.cni);
        let ingress = self.ingress(&raw.ingress, network.as_ref());
        let storage = self.storage(&raw.storage, &nodes);
        self.control_plane_count(&nodes, raw);

        let nodes: Vec<Node> = nodes.into_iter().map(|(_, n)| n).collect::<Option<Vec<_>>>()?;
        Some(Cluster {
            name: name?,
            kubernetes_version: version?,
            dns_domain: dns_domain?,
            timezone,
            network: network?,
            admin: admin?,
            cni: cni?,
            ingress: ingress?,
            storage: storage?,
            nodes,
        })
    }

    fn section<'a, T>(&mut self, value: &'a Option<S<T>>, name: &str, example: &str) -> Option<&'a S<T>> {
        if value.is_none() {
            self.error(
                name,
                None,
                format!("missing required section [{name}]"),
                format!("add\n{example}"),
            );
        }
        value.as_ref()
    }

    fn cluster_name(&mut self, s: &S<RawClusterSection>) -> Option<String> {
        let name = self.required(&s.get_ref().name, "cluster.name", span(s), "name = \"homelab\"")?;
        self.dns_label(name, "cluster.name")
    }

    fn version(&mut self, s: &S<RawClusterSection>, known: &[String]) -> Option<String> {
        let raw = self.required(
            &s.get_ref().kubernetes_version,
            "cluster.kubernetes_version",
            span(s),
            "kubernetes_version = \"1.36.4\"",
        )?;
        let version = raw.get_ref().trim().trim_start_matches('v');
        if known.iter().any(|k| k == version) {
            return Some(version.to_string());
        }
        let list = known.join(", ");
        self.error(
            "cluster.kubernetes_version",
            span(raw),
            format!("Kubernetes version `{}` is not pinned in artifacts.lock", raw.get_ref()),
            format!("use one of: {list} (`kubestick lock` shows what each pins)"),
        );
        None
    }

    fn timezone(&mut self, tz: &S<String>) -> Option<String> {
        let ok = !tz.get_ref().is_empty()
            && !tz.get_ref().starts_with('/')
            && !tz.get_ref().contains("..")
            && tz
                .get_ref()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if ok {
            Some(tz.get_ref().clone())
        } else {
            self.error(
                "cluster.timezone",
                span(tz),
                format!("`{}` is not a time zone name", tz.get_ref()),
                "use an IANA name such as \"Europe/Berlin\" or \"UTC\"",
            );
            None
        }
    }

    /// RFC 1123 label, as Kubernetes requires for node names.
    fn dns_label(&mut self, value: &S<String>, path: &str) -> Option<String> {
        let s = value.get_ref();
        let problem = if s.is_empty() {
            Some("is empty".to_string())
        } else if s.len() > 63 {
            Some(format!("is {} characters long; at most 63 are allowed", s.len()))
        } else if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            Some(format!(
                "contains `{c}`; only lowercase letters, digits and `-` are allowed"
            ))
        } else if s.starts_with('-') || s.ends_with('-') {
            Some("starts or ends with `-`".to_string())
        } else {
            None
        };
        match problem {
            None => Some(s.clone()),
            Some(p) => {
                let suggestion: String = s
                    .to_ascii_lowercase()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect::<String>()
                    .trim_matches('-')
                    .chars()
                    .take(63)
                    .collect();
                let help = if suggestion.is_empty() {
                    "use lowercase letters, digits and `-`, e.g. \"node1\"".to_string()
                } else {
                    format!("use a hostname-style name such as \"{suggestion}\"")
                };
                self.error(path, span(value), format!("`{s}` is not a valid name: it {p}"), help);
                None
            }
        }
    }

    fn dns_name(&mut self, value: &S<String>, path: &str) -> Option<String> {
        let s = value.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if ok {
            Some(s.clone())
        } else {
            self.error(
                path,
                span(value),
                format!("`{s}` is not a valid DNS name"),
                "use lowercase labels separated by dots, e.g. \"home.arpa\"",
            );
            None
        }
    }

    fn nodes(&mut self, raw: &RawCluster) -> Vec<(Option<Range<usize>>, Option<Node>)> {
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

    fn choice<T: Copy>(&mut self, value: &S<String>, path: &str, options: &[(&str, T)]) -> Option<T> {
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == value.get_ref()) {
            return Some(*t);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let help = match did_you_mean(value.get_ref(), &names) {
            Some(s) => format!("did you mean \"{s}\"? (one of: {})", names.join(", ")),
            None => format!("use one of: {}", names.join(", ")),
        };
        self.error(
            path,
            span(value),
            format!("`{}` is not a valid value", value.get_ref()),
            help,
        );
        None
    }

    fn wipe(&mut self, value: &S<String>, path: &str) -> Option<WipePolicy> {
        self.choice(
            value,
            path,
            &[("never", WipePolicy::Never), ("if-not-osd", WipePolicy::IfNotOsd)],
        )
    }

    fn disk(&mut self, value: &S<String>, path: &str) -> Option<String> {
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

    fn mac(&mut self, value: &S<String>, path: &str) -> Option<String> {
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

    fn ipv4(&mut self, value: &S<String>, path: &str) -> Option<Ipv4Addr> {
        match value.get_ref().trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            Ok(IpAddr::V6(_)) => {
                self.error(
                    path,
                    span(value),
                    "IPv6 addresses are not supported yet",
                    "use the node's IPv4 address on the LAN",
                );
                None
            }
            Err(_) => {
                let help = if value.get_ref().contains('/') {
                    "write the address without a prefix length; the prefix comes from network.subnet"
                } else {
                    "write a dotted IPv4 address such as \"192.168.1.21\""
                };
                self.error(
                    path,
                    span(value),
                    format!("`{}` is not an IPv4 address", value.get_ref()),
                    help,
                );
                None
            }
        }
    }

    fn cidr(&mut self, value: &S<String>, path: &str) -> Option<Ipv4Net> {
        let s = value.get_ref().trim();
        match s.parse::<Ipv4Net>() {
            Ok(net) if net.trunc() != net => {
                self.error(
                    path,
                    span(value),
                    format!("`{s}` has host bits set"),
                    format!("did you mean \"{}\"?", net.trunc()),
                );
                None
            }
            Ok(net) => Some(net),
            Err(_) => {
                self.error(
                    path,
                    span(value),
                    format!("`{s}` is not an IPv4 network in CIDR notation"),
                    "write it as address/prefix, e.g. \"192.168.1.0/24\"",
                );
                None
            }
        }
    }

    /// Records that `ip` is used at `path`; reports a clash with an earlier use.
    fn claim(&mut self, ip: Ipv4Addr, path: &str, span: Option<Range<usize>>) {
        if let Some((first, _)) = self.addresses.get(&ip).cloned() {
            self.error(
                path,
                span,
                format!("{ip} is already used by {first}"),
                "every node, the gateway and each virtual IP need an address of their own",
            );
        } else {
            self.addresses.insert(ip, (path.to_string(), span));
        }
    }

    fn in_subnet(&mut self, ip: Ipv4Addr, subnet: Ipv4Net, path: &str, span: Option<Range<usize>>) {
        if !subnet.contains(&ip) {
            self.error(
                path,
                span,
                format!("{ip} is outside the node subnet {subnet}"),
                format!("use an address in {subnet} (network.subnet), or correct the subnet"),
            );
        } else if subnet.prefix_len() < 31 && (ip == subnet.network() || ip == subnet.broadcast()) {
            let what = if ip == subnet.network() { "network" } else { "broadcast" };
            self.error(
                path,
                span,
                format!("{ip} is the {what} address of {subnet}"),
                format!(
                    "use a host address between {} and {}",
                    subnet.hosts().next().unwrap_or(ip),
                    subnet.hosts().last().unwrap_or(ip)
                ),
            );
        }
    }

    fn network(&mut self, n: &S<RawNetwork>, nodes: &[(Option<Range<usize>>, Option<Node>)]) -> Option<Network> {
        let raw = n.get_ref();
        let subnet = self
            .required(&raw.subnet, "network.subnet", span(n), "subnet = \"192.168.1.0/24\"")
            .and_then(|v| self.cidr(v, "network.subnet"));
        if let Some(subnet) = subnet {
            for (i, (_, node)) in nodes.iter().enumerate() {
                if let Some(node) = node {
                    let ip_span = self.addresses.get(&node.ip).and_then(|(_, s)| s.clone());
                    self.in_subnet(node.ip, subnet, &format!("nodes[{i}].ip"), ip_span);
                }
            }
        }
        let addr = |v: &mut Self, field: &Option<S<String>>, path: &str, example: &str| -> Option<Ipv4Addr> {
            let value = v.required(field, path, span(n), example)?;
            let ip = v.ipv4(value, path)?;
            v.claim(ip, path, span(value));
            if let Some(subnet) = subnet {
                v.in_subnet(ip, subnet, path, span(value));
            }
            Some(ip)
        };
        let gateway = addr(self, &raw.gateway, "network.gateway", "gateway = \"192.168.1.1\"");
        let api_vip = addr(self, &raw.api_vip, "network.api_vip", "api_vip = \"192.168.1.10\"");
        let ingress_vip = match &raw.ingress_vip {
            None => Some(None),
            Some(_) => addr(self, &raw.ingress_vip, "network.ingress_vip", "").map(Some),
        };

        let dns = match &raw.dns {
            None => {
                self.error(
                    "network.dns",
                    span(n),
                    "missing required field `dns`",
                    "add `dns = [\"192.168.1.1\"]` (your router usually answers DNS)",
                );
                None
            }
            Some(list) if list.get_ref().is_empty() => {
                self.error(
                    "network.dns",
                    span(list),
                    "no DNS server given",
                    "add at least one, e.g. `dns = [\"192.168.1.1\"]`",
                );
                None
            }
            Some(list) => list
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, s)| match s.get_ref().trim().parse::<IpAddr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        self.error(
                            &format!("network.dns[{i}]"),
                            span(s),
                            format!("`{}` is not an IP address", s.get_ref()),
                            "DNS servers are given by address, e.g. \"192.168.1.1\"",
                        );
                        None
                    }
                })
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<Option<Vec<_>>>(),
        };
        let search_domains = self.string_list(&raw.search_domains, "network.search_domains", |v, s, p| {
            v.dns_name(s, p)
        });
        let ntp = self.string_list(&raw.ntp, "network.ntp", |v, s, p| {
            let host = s.get_ref();
            let ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
            if !ok {
                v.error(
                    p,
                    span(s),
                    format!("`{host}` is not a host name or address"),
                    "name an NTP server, e.g. \"pool.ntp.org\" or \"192.168.1.1\"",
                );
            }
            ok.then(|| host.clone())
        });

        let pod_cidr = self.optional_cidr(&raw.pod_cidr, "network.pod_cidr", DEFAULT_POD_CIDR);
        let service_cidr = self.optional_cidr(&raw.service_cidr, "network.service_cidr", DEFAULT_SERVICE_CIDR);
        let cidr_span = |field: &Option<S<String>>| field.as_ref().map(|f| f.span()).or(span(n));
        if let Some(pod) = pod_cidr {
            let n_nodes = nodes.len().max(1) as u32;
            if pod.prefix_len() > FLANNEL_NODE_PREFIX
                || (1u64 << (FLANNEL_NODE_PREFIX - pod.prefix_len())) < u64::from(n_nodes)
            {
                self.error(
                    "network.pod_cidr",
                    cidr_span(&raw.pod_cidr),
                    format!("{pod} is too small: flannel gives each of the {n_nodes} nodes a /24"),
                    "use a larger range, e.g. \"10.244.0.0/16\"",
                );
            }
        }
        if let Some(svc) = service_cidr
            && svc.prefix_len() < MAX_SERVICE_PREFIX
        {
            self.error(
                "network.service_cidr",
                cidr_span(&raw.service_cidr),
                format!("{svc} is larger than Kubernetes allows for services (at most a /{MAX_SERVICE_PREFIX})"),
                "use e.g. \"10.96.0.0/12\"",
            );
        }
        let named = [
            ("network.subnet", subnet, cidr_span(&raw.subnet)),
            ("network.pod_cidr", pod_cidr, cidr_span(&raw.pod_cidr)),
            ("network.service_cidr", service_cidr, cidr_span(&raw.service_cidr)),
        ];
        for (i, (a_path, a, _)) in named.iter().enumerate() {
            for (b_path, b, b_span) in &named[i + 1..] {
                if let (Some(a), Some(b)) = (a, b)
                    && (a.contains(b) || b.contains(a))
                {
                    self.error(b_path, b_span.clone(), format!("{b} overlaps {a} ({a_path})"), "pods, services and the LAN each need their own address range; pick ranges that do not overlap, e.g. pod_cidr = \"10.244.0.0/16\", service_cidr = \"10.96.0.0/12\"");
                }
            }
        }

        Some(Network {
            subnet: subnet?,
            gateway: gateway?,
            dns: dns?,
            search_domains: search_domains?,
            ntp: ntp?,
            api_vip: api_vip?,
            ingress_vip: ingress_vip?,
            pod_cidr: pod_cidr?,
            service_cidr: service_cidr?,
        })
    }

    fn optional_cidr(&mut self, value: &Option<S<String>>, path: &str, default: &str) -> Option<Ipv4Net> {
        match value {
            None => default.parse().ok(),
            Some(v) => self.cidr(v, path),
        }
    }

    fn string_list(
        &mut self,
        value: &Option<S<Vec<S<String>>>>,
        path: &str,
        check: impl Fn(&mut Self, &S<String>, &str) -> Option<String>,
    ) -> Option<Vec<String>> {
        let Some(list) = value else {
            return Some(Vec::new());
        };
        list.get_ref()
            .iter()
            .enumerate()
            .map(|(i, s)| check(self, s, &format!("{path}[{i}]")))
            .collect::<Vec<_>>()
            .into_iter()
            .collect()
    }

    fn admin(&mut self, a: &S<RawAdmin>) -> Option<Admin> {
        let raw = a.get_ref();
        let user = self
            .required(&raw.user, "admin.user", span(a), "user = \"kube\"")
            .and_then(|u| {
                let s = u.get_ref();
                let valid = !s.is_empty()
                    && s.len() <= 32
                    && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
                if !valid {
                    self.error(
                        "admin.user",
                        span(u),
                        format!("`{s}` is not a valid user name"),
                        "use lowercase letters, digits, `_` and `-`, starting with a letter, e.g. \"kube\"",
                    );
                    None
                } else if ["root", "daemon", "bin", "sys", "nobody", "systemd-network"].contains(&s.as_str()) {
                    self.error(
                        "admin.user",
                        span(u),
                        format!("`{s}` is a system account"),
                        "choose your own user name, e.g. \"kube\"; it gets sudo rights",
                    );
                    None
                } else {
                    Some(s.clone())
                }
            });
        let keys = match &raw.ssh_authorized_keys {
            None => Some(Vec::new()),
            Some(list) => list
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, k)| self.ssh_key(k, &format!("admin.ssh_authorized_keys[{i}]")))
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<Option<Vec<_>>>(),
        };
        if keys.as_ref().is_some_and(Vec::is_empty) {
            self.warn(
                "admin.ssh_authorized_keys",
                raw.ssh_authorized_keys.as_ref().map_or(span(a), span),
                "no SSH key: nobody will be able to log in to the nodes",
                "add your public key, e.g. the contents of ~/.ssh/id_ed25519.pub",
            );
        }
        Some(Admin {
            user: user?,
            ssh_authorized_keys: keys?,
        })
    }

    fn ssh_key(&mut self, value: &S<String>, path: &str) -> Option<String> {
        let s = value.get_ref().trim();
        if s.contains("PRIVATE KEY") {
            self.error(path, span(value), "this is a private key", "never put a private key here: use the public half (the .pub file, e.g. ~/.ssh/id_ed25519.pub), and consider this private key exposed");
            return None;
        }
        let mut fields = s.split_whitespace();
        let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let problem = if !SSH_KEY_TYPES.contains(&kind) {
            Some(format!("`{kind}` is not an SSH public key type"))
        } else {
            match base64::engine::general_purpose::STANDARD.decode(blob) {
                Err(_) => Some("the key data is not valid base64 (was the line cut or wrapped?)".to_string()),
                Ok(bytes) => match ssh_blob_fields(&bytes) {
                    None => Some("the key data is cut short or has bytes left over (was it copied whole?)".to_string()),
                    Some(fields) if fields.first().copied() != Some(kind.as_bytes()) => Some(format!(
                        "the key data does not hold a {kind} key (was it copied whole?)"
                    )),
                    Some(fields) if kind == "ssh-ed25519" && (fields.len() != 2 || fields[1].len() != 32) => {
                        Some("an ed25519 key holds exactly 32 bytes of key data (was it copied whole?)".to_string())
                    }
                    Some(fields) if fields.len() < 2 => Some("the key data holds no key".to_string()),
                    Some(_) => None,
                },
            }
        };
        match problem {
            None => Some(s.to_string()),
            Some(p) => {
                self.error(
                    path,
                    span(value),
                    format!("malformed SSH public key: {p}"),
                    "paste one whole line of a .pub file: \"ssh-ed25519 AAAAC3Nza... you@laptop\"",
                );
                None
            }
        }
    }

    fn cni(&mut self, cni: &Option<S<RawCni>>) -> Option<Cni> {
        let Some(c) = cni else {
            return Some(Cni {
                plugin: "flannel",
                backend: "vxlan",
            });
        };
        let plugin = match &c.get_ref().plugin {
            None => Some("flannel"),
            Some(p) => self.choice(p, "cni.plugin", &[("flannel", "flannel")]),
        };
        let backend = match &c.get_ref().backend {
            None => Some("vxlan"),
            Some(b) => self.choice(b, "cni.backend", &[("vxlan", "vxlan")]),
        };
        Some(Cni {
            plugin: plugin?,
            backend: backend?,
        })
    }

    fn ingress(&mut self, ingress: &Option<S<RawIngress>>, network: Option<&Network>) -> Option<Option<Ingress>> {
        let Some(i) = ingress else {
            if network.is_some_and(|n| n.ingress_vip.is_some()) {
                self.warn(
                    "network.ingress_vip",
                    None,
                    "ingress_vip is set but there is no [ingress] section, so nothing answers on it",
                    "add [ingress] with acme_email, or remove ingress_vip",
                );
            }
            return Some(None);
        };
        let raw = i.get_ref();
        let controller = match &raw.controller {
            None => Some("traefik"),
            Some(c) => self.choice(c, "ingress.controller", &[("traefik", "traefik")]),
        };
        let email = self
            .required(
                &raw.acme_email,
                "ingress.acme_email",
                span(i),
                "acme_email = \"you@example.net\"",
            )
            .and_then(|e| {
                let s = e.get_ref().trim();
                let valid = s.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty()
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !s.chars().any(char::is_whitespace)
                });
                if !valid {
                    self.error(
                        "ingress.acme_email",
                        span(e),
                        format!("`{s}` is not an e-mail address"),
                        "Let's Encrypt sends expiry notices here; use a real address such as \"you@yourdomain.net\"",
                    );
                    return None;
                }
                let domain = s.rsplit('@').next().unwrap_or_default().to_ascii_lowercase();
                if ["example.com", "example.org", "example.net"].contains(&domain.as_str()) {
                    self.warn(
                        "ingress.acme_email",
                        span(e),
                        format!("Let's Encrypt refuses addresses at {domain}"),
                        "use an address you read; certificates will not be issued otherwise",
                    );
                }
                Some(s.to_string())
            });
        let server = match &raw.acme_server {
            None => Some(AcmeServer::Production),
            Some(s) => self.choice(
                s,
                "ingress.acme_server",
                &[("production", AcmeServer::Production), ("staging", AcmeServer::Staging)],
            ),
        };
        if network.is_some_and(|n| n.ingress_vip.is_none()) {
            self.error("network.ingress_vip", span(i), "[ingress] needs an address that survives the loss of a node", "add `ingress_vip = \"192.168.1.11\"` to [network]: a free LAN address your router forwards ports 80 and 443 to");
        }
        Some(Some(Ingress {
            controller: controller?,
            acme_email: email?,
            acme_server: server?,
        }))
    }

    fn storage(
        &mut self,
        storage: &Option<S<RawStorage>>,
        nodes: &[(Option<Range<usize>>, Option<Node>)],
    ) -> Option<Option<Storage>> {
        let with_disk = nodes
            .iter()
            .filter(|(_, n)| n.as_ref().is_some_and(|n| n.disk.is_some()))
            .count();
        let Some(s) = storage else {
            if with_disk > 0 {
                self.error(
                    "storage",
                    None,
                    "nodes name disks but there is no [storage] section",
                    "add [storage] with provider = \"rook-ceph\" and replicas = 3, or remove the disks",
                );
                return None;
            }
            return Some(None);
        };
        let raw = s.get_ref();
        let provider = match &raw.provider {
            None => Some("rook-ceph"),
            Some(p) => self.choice(p, "storage.provider", &[("rook-ceph", "rook-ceph")]),
        };
        let replicas = match &raw.replicas {
            None => Some(3),
            Some(r) if !(1..=7).contains(r.get_ref()) => {
                self.error(
                    "storage.replicas",
                    span(r),
                    format!("{} replicas is not supported", r.get_ref()),
                    "use 3 (the usual choice), or 1 for a single-disk lab",
                );
                None
            }
            Some(r) => Some(*r.get_ref() as u32),
        };
        let any_invalid = nodes.iter().any(|(_, n)| n.is_none());
        if let Some(r) = replicas.filter(|_| !any_invalid) {
            let at = raw.replicas.as_ref().map_or(span(s), span);
            if with_disk == 0 {
                self.error(
                    "storage",
                    span(s),
                    "[storage] is set but no node has a `disk`",
                    "add `disk = \"/dev/disk/by-id/...\"` to the nodes whose disk ceph may use",
                );
            } else if (r as usize) > with_disk {
                self.error("storage.replicas", at, format!("{r} replicas need {r} nodes with a disk (ceph puts each copy on a different host), but only {with_disk} have one"), format!("add disks to more nodes, or set replicas = {with_disk}"));
            } else if r < 3 && with_disk >= 3 {
                self.warn(
                    "storage.replicas",
                    at,
                    format!("with {r} replica(s), losing a disk can lose data"),
                    "use replicas = 3 when three nodes have disks",
                );
            }
        }
        Some(Some(Storage {
            provider: provider?,
            replicas: replicas?,
        }))
    }

    fn control_plane_count(&mut self, nodes: &[(Option<Range<usize>>, Option<Node>)], raw: &RawCluster) {
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

/// The length-prefixed fields of an SSH public key blob (RFC 4253 §6.6), or None when
/// the blob is not exactly a sequence of them.
fn ssh_blob_fields(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        fields.push(bytes.get(4..4 + len)?);
        bytes = &bytes[4 + len..];
    }
    Some(fields)
}

/// The closest candidate, if any is close enough to be a likely typo: a few edits away
/// (swapped letters count as one), or sharing most of a long prefix.
pub fn did_you_mean<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let given = given.to_ascii_lowercase();
    candidates
        .iter()
        .filter_map(|c| {
            let edits = strsim::damerau_levenshtein(&given, c);
            let close = edits <= (c.len() / 3).max(1) || strsim::jaro_winkler(&given, c) >= 0.9;
            close.then_some((edits, *c))
        })
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_typos_only() {
        assert_eq!(
            did_you_mean("controlplane", &["control-plane", "worker"]),
            Some("control-plane")
        );
        assert_eq!(
            did_you_mean("api_vipp", &["api_vip", "ingress_vip", "subnet"]),
            Some("api_vip")
        );
        assert_eq!(did_you_mean("zzz", &["control-plane", "worker"]), None);
        assert_eq!(did_you_mean("mca", &["name", "role", "ip", "mac"]), Some("mac"));
        assert_eq!(
            did_you_mean("kubernetes_versoin", &["name", "kubernetes_version"]),
            Some("kubernetes_version")
        );
    }
}
