//! [network]: addresses, the subnet they must sit in, and address ranges that must not overlap.

use super::*;

/// flannel gives every node a /24 out of the pod CIDR.
const FLANNEL_NODE_PREFIX: u8 = 24;
/// kube-apiserver refuses IPv4 service ranges larger than this.
const MAX_SERVICE_PREFIX: u8 = 12;

impl Validator<'_> {
    pub(super) fn ipv4(&mut self, value: &S<String>, path: &str) -> Option<Ipv4Addr> {
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

    pub(super) fn cidr(&mut self, value: &S<String>, path: &str) -> Option<Ipv4Net> {
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
    pub(super) fn claim(&mut self, ip: Ipv4Addr, path: &str, span: Option<Range<usize>>) {
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

    pub(super) fn in_subnet(&mut self, ip: Ipv4Addr, subnet: Ipv4Net, path: &str, span: Option<Range<usize>>) {
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

    pub(super) fn network(
        &mut self,
        n: &S<RawNetwork>,
        nodes: &[(Option<Range<usize>>, Option<Node>)],
    ) -> Option<Network> {
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

    pub(super) fn optional_cidr(&mut self, value: &Option<S<String>>, path: &str, default: &str) -> Option<Ipv4Net> {
        match value {
            None => default.parse().ok(),
            Some(v) => self.cidr(v, path),
        }
    }

    pub(super) fn string_list(
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
}
