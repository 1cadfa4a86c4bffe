//! The private L2 segment the VMs share: an Ethernet hub on a unix socket. QEMU attaches
//! with `-netdev stream,server=off,addr.type=unix,...`; each frame travels as a 4-byte
//! big-endian length followed by the Ethernet frame (QEMU's `-netdev socket`/`dgram` are
//! point-to-point; a third peer is silently ignored, and multicast is not allowed on the
//! development machines).
//!
//! Broadcast, multicast and frames for a MAC not seen yet go to every other port; a frame
//! for a MAC the hub has seen as a source goes only to that port, as a learning switch does.
//! Copying every frame everywhere is not enough here: the host's port is QEMU's user-mode
//! network, which takes every TCP segment it receives as its own to handle and, restricted,
//! answers a connection attempt between two nodes with a reset before the real peer can
//! accept it.
//!
//! Ports come and go (`kubestick vm stop NODE` kills a QEMU, `vm start` brings a new one);
//! a port that does not keep up loses frames instead of stalling the others, as a switch
//! drops frames for a congested port.
//!
//! The hub also notes which MAC last claimed each IPv4 address in an ARP packet and writes
//! that to a JSON file when it changes: keepalived announces a virtual IP it takes over with
//! gratuitous ARP, so this tells `kubestick vm status` which node holds the API address.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// Largest frame accepted: QEMU's stream netdev carries no offloads, so frames are at most
/// an Ethernet MTU plus headers; 64 KiB leaves room for jumbo frames and rejects garbage.
const MAX_FRAME: usize = 65536;
/// Frames queued per port before the hub starts dropping frames for that port.
const QUEUE: usize = 512;

type Frame = Arc<Vec<u8>>;

struct Port {
    id: u64,
    tx: SyncSender<Frame>,
}

/// Who claimed an IPv4 address in ARP, since when (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArpEntry {
    pub mac: String,
    pub since: u64,
}

pub type ArpTable = BTreeMap<Ipv4Addr, ArpEntry>;

pub struct Hub {
    ports: Mutex<Vec<Port>>,
    /// Source MAC → the port it was last seen on.
    macs: Mutex<HashMap<[u8; 6], u64>>,
    next_id: AtomicU64,
    arp: Mutex<ArpTable>,
    arp_file: Option<PathBuf>,
    dropped: AtomicU64,
}

impl Hub {
    pub fn new(arp_file: Option<PathBuf>) -> Arc<Hub> {
        Arc::new(Hub {
            ports: Mutex::new(Vec::new()),
            macs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            arp: Mutex::new(ArpTable::new()),
            arp_file,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn port_count(&self) -> usize {
        self.ports.lock().expect("hub lock").len()
    }

    pub fn arp_table(&self) -> ArpTable {
        self.arp.lock().expect("arp lock").clone()
    }

    /// Accepts ports forever.
    pub fn serve(self: &Arc<Self>, listener: UnixListener) -> Result<()> {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => self.attach(stream)?,
                Err(e) => log(&format!("accept failed: {e}")),
            }
        }
        Ok(())
    }

    fn attach(self: &Arc<Self>, stream: UnixStream) -> Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel::<Frame>(QUEUE);
        let mut writer = stream.try_clone().context("duplicating a port's socket")?;
        self.ports.lock().expect("hub lock").push(Port { id, tx });
        log(&format!("port {id} attached ({} ports)", self.port_count()));
        std::thread::spawn(move || {
            // Ends when the port is detached (its sender dropped) or the peer is gone.
            for frame in rx {
                if writer.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = writer.shutdown(Shutdown::Both);
        });
        let hub = Arc::clone(self);
        std::thread::spawn(move || {
            let mut stream = stream;
            let why = match hub.relay(id, &mut stream) {
                Ok(()) => "disconnected".to_string(),
                Err(e) => format!("dropped: {e}"),
            };
            hub.ports.lock().expect("hub lock").retain(|p| p.id != id);
            // Frames for its MACs are flooded again until they show up on another port.
            hub.macs.lock().expect("mac lock").retain(|_, port| *port != id);
            let _ = stream.shutdown(Shutdown::Both);
            log(&format!("port {id} {why} ({} ports)", hub.port_count()));
        });
        Ok(())
    }

    /// Reads frames from port `id` until it closes, copying each to every other port.
    fn relay(&self, id: u64, stream: &mut UnixStream) -> io::Result<()> {
        loop {
            let mut len = [0u8; 4];
            match stream.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame of {n} bytes is larger than {MAX_FRAME}: not a QEMU stream netdev?"),
                ));
            }
            let mut buf = vec![0u8; 4 + n];
            buf[..4].copy_from_slice(&len);
            stream.read_exact(&mut buf[4..])?;
            if n < 14 {
                continue; // empty, or not even an Ethernet header
            }
            self.snoop_arp(&buf[4..]);
            let to = self.learn_and_route(id, &buf[4..]);
            let frame: Frame = Arc::new(buf);
            let ports = self.ports.lock().expect("hub lock");
            for port in ports.iter().filter(|p| p.id != id && to.is_none_or(|t| t == p.id)) {
                if let Err(TrySendError::Full(_)) = port.tx.try_send(Arc::clone(&frame)) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Notes the sender's MAC on port `from`; returns the one port the frame is for, or
    /// `None` to send it to all others.
    fn learn_and_route(&self, from: u64, frame: &[u8]) -> Option<u64> {
        let mac = |b: &[u8]| -> [u8; 6] { b.try_into().expect("6 bytes") };
        let (dst, src) = (mac(&frame[0..6]), mac(&frame[6..12]));
        let group = |m: &[u8; 6]| m[0] & 1 == 1;
        let mut macs = self.macs.lock().expect("mac lock");
        if !group(&src) {
            macs.insert(src, from);
        }
        if group(&dst) { None } else { macs.get(&dst).copied() }
    }

    fn snoop_arp(&self, frame: &[u8]) {
        let Some((ip, mac)) = arp_sender(frame) else {
            return;
        };
        let mut table = self.arp.lock().expect("arp lock");
        if table.get(&ip).is_some_and(|e| e.mac == mac) {
            return;
        }
        table.insert(ip, ArpEntry { mac, since: now() });
        if let Some(path) = &self.arp_file {
            let text = serde_json::to_vec_pretty(&*table).expect("serializable");
            if let Err(e) = crate::fsx::write_atomic(path, &text, crate::fsx::PUBLIC_MODE) {
                log(&format!("cannot write {}: {e:#}", path.display()));
            }
        }
    }
}

/// The sender's address and MAC of an Ethernet/IPv4 ARP packet (request or reply).
/// Probes (sender 0.0.0.0) say nothing about who holds an address.
fn arp_sender(frame: &[u8]) -> Option<(Ipv4Addr, String)> {
    const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
    if frame.len() < 42 || frame[12..14] != ETHERTYPE_ARP {
        return None;
    }
    let arp = &frame[14..];
    // Ethernet hardware (1), IPv4 protocol (0x0800), 6-byte MACs, 4-byte addresses.
    if arp[0..2] != [0, 1] || arp[2..4] != [8, 0] || arp[4] != 6 || arp[5] != 4 {
        return None;
    }
    let mac = &arp[8..14];
    let ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    if ip.is_unspecified() {
        return None;
    }
    let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    Some((ip, mac))
}

pub fn read_arp_table(path: &Path) -> ArpTable {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn log(msg: &str) {
    eprintln!("[{}] kubestick vm hub: {msg}", now());
}

/// `kubestick vm hub`: binds `socket` (replacing a stale one) and serves until killed.
pub fn run(socket: &Path, arp_file: &Path) -> Result<()> {
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            bail!("another hub already serves {}", socket.display());
        }
        std::fs::remove_file(socket).with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    let listener = UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    // Whoever can open the socket is on the segment: only this user.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    log(&format!("serving {}", socket.display()));
    Hub::new(Some(arp_file.to_path_buf())).serve(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    struct Segment {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        arp: PathBuf,
        hub: Arc<Hub>,
    }

    fn segment() -> Segment {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hub.sock");
        let arp = dir.path().join("arp.json");
        let listener = UnixListener::bind(&socket).unwrap();
        let hub = Hub::new(Some(arp.clone()));
        let serving = Arc::clone(&hub);
        std::thread::spawn(move || serving.serve(listener));
        Segment {
            _dir: dir,
            socket,
            arp,
            hub,
        }
    }

    /// How long a frame or a port change may take on a loaded machine before a test gives
    /// up: they take microseconds; the bound only stops a broken hub from hanging the run.
    const PATIENCE: Duration = Duration::from_secs(60);

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    impl Segment {
        /// A port, once the hub has attached it.
        fn connect(&self) -> UnixStream {
            let before = self.hub.port_count();
            let s = UnixStream::connect(&self.socket).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            wait_for("the port to attach", || self.hub.port_count() > before);
            s
        }
    }

    fn ethernet(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(dst);
        f.extend(src);
        f.extend([0x88, 0xb5]); // local experimental ethertype
        f.extend(payload);
        f
    }

    fn send(s: &mut UnixStream, frame: &[u8]) {
        let mut buf = (frame.len() as u32).to_be_bytes().to_vec();
        buf.extend(frame);
        s.write_all(&buf).unwrap();
    }

    fn recv(s: &mut UnixStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut f).unwrap();
        f
    }

    /// Proves that `s` was sent nothing before this point, without waiting for a silence:
    /// `from` (another port) broadcasts a marker, and the next frame `s` receives must be it.
    /// The hub queues each port's frames in the order it routes them, and everything tested
    /// before was routed before the marker was sent.
    fn nothing_before_marker(from: &mut UnixStream, s: &mut UnixStream) -> bool {
        let marker = ethernet([0xff; 6], [2, 0, 0, 0, 0, 0x99], b"marker");
        send(from, &marker);
        recv(s) == marker
    }

    #[test]
    fn broadcasts_reach_every_other_port_and_never_the_sender() {
        let seg = segment();
        let (mut a, mut b, mut c) = (seg.connect(), seg.connect(), seg.connect());
        let f1 = ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], b"from a");
        send(&mut a, &f1);
        assert_eq!(recv(&mut b), f1);
        assert_eq!(recv(&mut c), f1);
        // Multicast (VRRP's 01:00:5e:00:00:12) likewise.
        let f2 = ethernet([1, 0, 0x5e, 0, 0, 0x12], [2, 0, 0, 0, 0, 3], b"from c");
        send(&mut c, &f2);
        assert_eq!(recv(&mut a), f2);
        assert_eq!(recv(&mut b), f2);
        assert!(nothing_before_marker(&mut b, &mut a), "a got its own frame back");
        assert!(nothing_before_marker(&mut b, &mut c), "c got its own frame back");
    }

    #[test]
    fn unicast_goes_only_to_the_port_its_mac_was_seen_on() {
        let seg = segment();
        let (mut a, mut b, mut host) = (seg.connect(), seg.connect(), seg.connect());
        let (mac_a, mac_b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        // Before b has said anything, a frame for it is flooded.
        let unknown = ethernet(mac_b, mac_a, b"who are you");
        send(&mut a, &unknown);
        assert_eq!(recv(&mut b), unknown);
        assert_eq!(recv(&mut host), unknown);
        // Once b has sent a frame, frames for it reach b and nobody else.
        send(&mut b, &ethernet(mac_a, mac_b, b"hello a"));
        assert_eq!(recv(&mut a), ethernet(mac_a, mac_b, b"hello a"));
        let known = ethernet(mac_b, mac_a, b"just for b");
        send(&mut a, &known);
        assert_eq!(recv(&mut b), known);
        assert!(
            nothing_before_marker(&mut b, &mut host),
            "the host's port saw a frame between two nodes"
        );
        assert_eq!(recv(&mut a), ethernet([0xff; 6], [2, 0, 0, 0, 0, 0x99], b"marker"));
        // b's VM is killed and started again on a new port: flooded until it speaks again.
        drop(b);
        wait_for("the port to detach", || seg.hub.port_count() == 2);
        let mut b2 = seg.connect();
        send(&mut a, &known);
        assert_eq!(recv(&mut b2), known);
        assert_eq!(recv(&mut host), known);
    }

    #[test]
    fn frames_split_across_writes_or_packed_into_one_arrive_whole_and_in_order() {
        let seg = segment();
        let (mut a, mut b) = (seg.connect(), seg.connect());
        let f1 = ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], &[7u8; 1500]);
        let f2 = ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], b"second");
        let mut wire = (f1.len() as u32).to_be_bytes().to_vec();
        wire.extend(&f1);
        wire.extend((f2.len() as u32).to_be_bytes());
        wire.extend(&f2);
        // Byte by byte for the first frame's header, then the rest in odd-sized pieces.
        for byte in &wire[..3] {
            a.write_all(std::slice::from_ref(byte)).unwrap();
            a.flush().unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        for piece in wire[3..].chunks(333) {
            a.write_all(piece).unwrap();
        }
        assert_eq!(recv(&mut b), f1);
        assert_eq!(recv(&mut b), f2);
    }

    #[test]
    fn ports_leave_and_come_back() {
        let seg = segment();
        let (mut a, b, mut c) = (seg.connect(), seg.connect(), seg.connect());
        // A VM is killed: its port goes away, the others keep talking.
        drop(b);
        wait_for("the port to detach", || seg.hub.port_count() == 2);
        let f = ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], b"still here");
        send(&mut a, &f);
        assert_eq!(recv(&mut c), f);
        // It is started again and gets traffic like before.
        let mut b2 = seg.connect();
        assert_eq!(seg.hub.port_count(), 3);
        let f = ethernet([0xff; 6], [2, 0, 0, 0, 0, 3], b"welcome back");
        send(&mut c, &f);
        assert_eq!(recv(&mut b2), f);
        assert_eq!(recv(&mut a), f);
    }

    #[test]
    fn a_garbage_length_drops_only_that_port() {
        let seg = segment();
        let (mut a, mut b, mut c) = (seg.connect(), seg.connect(), seg.connect());
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        wait_for("the bad port to be dropped", || seg.hub.port_count() == 2);
        let mut byte = [0u8; 1];
        assert_eq!(a.read(&mut byte).unwrap(), 0, "the hub closes the bad port");
        let f = ethernet([0xff; 6], [2, 0, 0, 0, 0, 2], b"unaffected");
        send(&mut b, &f);
        assert_eq!(recv(&mut c), f);
    }

    #[test]
    fn a_port_that_does_not_read_does_not_stall_the_others() {
        let seg = segment();
        let (mut a, _stuck, mut c) = (seg.connect(), seg.connect(), seg.connect());
        let f = ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], &[1u8; 1400]);
        let end = ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], b"end");
        let reader = std::thread::spawn(move || while recv(&mut c) != end {});
        // Far more than the stuck port's queue and socket buffer hold.
        for _ in 0..4000 {
            send(&mut a, &f);
        }
        std::thread::sleep(Duration::from_millis(200));
        send(&mut a, &ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], b"end"));
        reader
            .join()
            .expect("the reading port got everything up to the end marker");
        assert!(seg.hub.dropped.load(Ordering::Relaxed) > 0);
    }

    fn arp(op: u16, sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend([0xff; 6]);
        f.extend(sender_mac);
        f.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4]);
        f.extend(op.to_be_bytes());
        f.extend(sender_mac);
        f.extend(sender_ip);
        f.extend([0; 6]);
        f.extend(target_ip);
        f
    }

    #[test]
    fn records_who_claims_an_address_in_arp() {
        let seg = segment();
        let (mut n1, mut n2, _host) = (seg.connect(), seg.connect(), seg.connect());
        let vip = [10, 77, 0, 10];
        // Gratuitous ARP of the first holder, a probe (ignored), then a takeover.
        send(&mut n1, &arp(1, [0x52, 0x54, 0, 0x77, 0, 1], vip, vip));
        send(&mut n2, &arp(1, [0x52, 0x54, 0, 0x77, 0, 2], [0, 0, 0, 0], vip));
        let vip = Ipv4Addr::from(vip);
        wait_for("the first holder", || {
            read_arp_table(&seg.arp).get(&vip).map(|e| e.mac.clone()) == Some("52:54:00:77:00:01".into())
        });
        send(
            &mut n2,
            &arp(2, [0x52, 0x54, 0, 0x77, 0, 2], vip.octets(), [10, 77, 0, 1]),
        );
        wait_for("the takeover", || {
            read_arp_table(&seg.arp).get(&vip).map(|e| e.mac.clone()) == Some("52:54:00:77:00:02".into())
        });
        assert_eq!(
            seg.hub.arp_table().len(),
            1,
            "the probe from 0.0.0.0 is not an address claim"
        );
    }

    #[test]
    fn run_replaces_a_stale_socket_but_not_a_live_hub() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hub.sock");
        drop(UnixListener::bind(&socket).unwrap()); // stale: nobody listens
        let (s, a) = (socket.clone(), dir.path().join("arp.json"));
        std::thread::spawn(move || run(&s, &a));
        wait_for("the hub to listen", || UnixStream::connect(&socket).is_ok());
        let err = run(&socket, &dir.path().join("arp.json")).unwrap_err();
        assert!(err.to_string().contains("already serves"), "{err}");
    }
}
