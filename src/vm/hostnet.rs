//! The host's side of the segment: which addresses QEMU's user-mode network takes in the
//! cluster's subnet, and which host ports (on 127.0.0.1 only) reach which node.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};

use anyhow::{Context as _, Result};

use crate::error::BadInput;
use crate::image::manifest::Manifest;
use crate::vm::qemu::Forward;
use crate::vm::state::Ports;

/// libslirp's DHCP server hands out this many addresses from `dhcpstart`.
const DHCP_RANGE: u32 = 16;
pub const SSH_PORT: u16 = 22;

/// The addresses slirp needs besides the gateway: its DNS address (which QEMU insists must
/// differ from the gateway) and the start of its DHCP range. Both are put where no node or
/// virtual IP is, from the top of the subnet down, so slirp never answers for a node.
/// Nodes have static addresses, so the DHCP range only matters if one falls back to DHCP.
pub fn slirp_addresses(m: &Manifest) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let mut used: BTreeSet<Ipv4Addr> = m.nodes.iter().map(|n| n.ip).collect();
    used.extend([m.gateway, m.api_vip]);
    used.extend(m.ingress_vip);
    let free: Vec<Ipv4Addr> = m.subnet.hosts().rev().filter(|a| !used.contains(a)).collect();
    let dns = *free.first().ok_or_else(|| {
        BadInput(format!(
            "the subnet {} has no free address for the rehearsal's DNS stand-in; use a larger subnet",
            m.subnet
        ))
    })?;
    // The highest run of DHCP_RANGE free addresses below the DNS address, else any free one.
    let rest = &free[1..];
    let dhcp_start = rest
        .windows(DHCP_RANGE as usize)
        .find(|w| u32::from(w[0]) - u32::from(w[w.len() - 1]) == DHCP_RANGE - 1)
        .map(|w| w[w.len() - 1])
        .or_else(|| rest.last().copied())
        .unwrap_or(dns);
    Ok((dns, dhcp_start))
}

/// Gives every forward that has none a free port on 127.0.0.1, keeping ports chosen earlier.
pub fn allocate_ports(ports: &mut Ports, m: &Manifest) -> Result<()> {
    // Hold every new listener until all are chosen, so the kernel never hands out one twice.
    let mut held = Vec::new();
    let mut fresh = || -> Result<u16> {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port on 127.0.0.1")?;
        let port = l.local_addr()?.port();
        held.push(l);
        Ok(port)
    };
    if ports.api == 0 {
        ports.api = fresh()?;
    }
    if m.ingress_vip.is_some() {
        if ports.ingress_http.is_none() {
            ports.ingress_http = Some(fresh()?);
        }
        if ports.ingress_https.is_none() {
            ports.ingress_https = Some(fresh()?);
        }
    }
    for n in &m.nodes {
        if !ports.ssh.contains_key(&n.name) {
            let p = fresh()?;
            ports.ssh.insert(n.name.clone(), p);
        }
    }
    Ok(())
}

pub fn forwards(ports: &Ports, m: &Manifest) -> Vec<Forward> {
    let mut f = vec![Forward {
        what: "Kubernetes API (virtual IP)".into(),
        host_port: ports.api,
        guest: m.api_vip,
        guest_port: m.api_port,
    }];
    if let (Some(vip), Some(http), Some(https)) = (m.ingress_vip, ports.ingress_http, ports.ingress_https) {
        f.push(Forward {
            what: "ingress HTTP (virtual IP)".into(),
            host_port: http,
            guest: vip,
            guest_port: 80,
        });
        f.push(Forward {
            what: "ingress HTTPS (virtual IP)".into(),
            host_port: https,
            guest: vip,
            guest_port: 443,
        });
    }
    for n in &m.nodes {
        if let Some(&p) = ports.ssh.get(&n.name) {
            f.push(Forward {
                what: format!("SSH to {}", n.name),
                host_port: p,
                guest: n.ip,
                guest_port: SSH_PORT,
            });
        }
    }
    f
}

/// QEMU only says "could not set up host forwarding rule"; name the port and the fix.
pub fn check_ports_free(forwards: &[Forward]) -> Result<()> {
    for f in forwards {
        if let Err(e) = TcpListener::bind((Ipv4Addr::LOCALHOST, f.host_port)) {
            return Err(BadInput(format!(
                "127.0.0.1:{} ({}) is taken by another program ({e}); stop that program, or run \
                 `kubestick vm destroy` and `vm up` again to choose new ports",
                f.host_port, f.what
            ))
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::tests::rehearsal;

    #[test]
    fn slirp_takes_free_addresses_from_the_top() {
        let m = rehearsal();
        let (dns, dhcp) = slirp_addresses(&m).unwrap();
        assert_eq!(dns, Ipv4Addr::new(10, 77, 0, 254));
        assert_eq!(dhcp, Ipv4Addr::new(10, 77, 0, 238));
    }

    #[test]
    fn slirp_addresses_avoid_nodes_at_the_top_of_the_subnet() {
        let mut m = rehearsal();
        m.nodes[0].ip = Ipv4Addr::new(10, 77, 0, 254);
        m.nodes[1].ip = Ipv4Addr::new(10, 77, 0, 245);
        let (dns, dhcp) = slirp_addresses(&m).unwrap();
        assert_eq!(dns, Ipv4Addr::new(10, 77, 0, 253));
        // 244 down to 229 is the first free run of 16.
        assert_eq!(dhcp, Ipv4Addr::new(10, 77, 0, 229));
        let used: Vec<_> = m.nodes.iter().map(|n| n.ip).collect();
        for i in 0..DHCP_RANGE {
            assert!(!used.contains(&Ipv4Addr::from(u32::from(dhcp) + i)));
        }
    }

    #[test]
    fn a_full_small_subnet_still_gets_a_dns_address_or_a_clear_error() {
        let mut m = rehearsal();
        m.subnet = "10.77.0.0/29".parse().unwrap(); // hosts .1-.6
        m.gateway = Ipv4Addr::new(10, 77, 0, 1);
        m.api_vip = Ipv4Addr::new(10, 77, 0, 2);
        m.ingress_vip = None;
        for (i, n) in m.nodes.iter_mut().enumerate() {
            n.ip = Ipv4Addr::new(10, 77, 0, 3 + i as u8);
        }
        let (dns, dhcp) = slirp_addresses(&m).unwrap();
        assert_eq!((dns, dhcp), (Ipv4Addr::new(10, 77, 0, 6), Ipv4Addr::new(10, 77, 0, 6)));
        m.nodes[0].ip = Ipv4Addr::new(10, 77, 0, 6);
        m.ingress_vip = Some(Ipv4Addr::new(10, 77, 0, 3));
        assert!(slirp_addresses(&m).unwrap_err().is::<BadInput>());
    }

    #[test]
    fn ports_are_allocated_once_distinct_and_kept() {
        let m = rehearsal();
        let mut ports = Ports::default();
        allocate_ports(&mut ports, &m).unwrap();
        let first = ports.clone();
        let mut all: Vec<u16> = vec![ports.api, ports.ingress_http.unwrap(), ports.ingress_https.unwrap()];
        all.extend(ports.ssh.values());
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "ports must be distinct: {first:?}");
        allocate_ports(&mut ports, &m).unwrap();
        assert_eq!(ports, first);

        let f = forwards(&ports, &m);
        assert_eq!(f.len(), 6);
        assert_eq!((f[0].guest, f[0].guest_port), (m.api_vip, 6443));
        assert!(
            f.iter()
                .any(|x| x.guest == Ipv4Addr::new(10, 77, 0, 23) && x.guest_port == 22)
        );
    }

    #[test]
    fn a_taken_port_is_named() {
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let f = [Forward {
            what: "SSH to optiplex-1".into(),
            host_port: port,
            guest: Ipv4Addr::new(10, 77, 0, 21),
            guest_port: 22,
        }];
        let err = check_ports_free(&f).unwrap_err();
        assert!(err.is::<BadInput>());
        assert!(
            err.to_string()
                .contains(&format!("127.0.0.1:{port} (SSH to optiplex-1)")),
            "{err}"
        );
    }
}
