//! How fast the rehearsal's boot disk is: the host's own speed, or a cheap USB stick's. The
//! nodes run their OS, containerd's images and etcd from the stick, and etcd's health on a
//! real PC is the stick's fsync; a rehearsal on the host's SSD would hide that.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stick {
    /// As fast as the host's disk
    #[default]
    Full,
    /// A cheap USB 2 stick: 30 MB/s read, 8 MB/s write, 1500 random reads and 500 random
    /// writes (4 KiB) a second
    Usb2,
}

/// Limits of a cheap USB 2 stick. Bandwidth: USB 2's practical ceiling for reads (about
/// 30-35 MB/s of its 480 Mbit/s) and the ~8 MB/s cheap USB 2 sticks write sequentially.
/// IOPS: the SD Association's A1 class, the only published floor for random I/O on consumer
/// flash (1500 reads, 500 writes of 4 KiB a second); many sticks are slower still. Each
/// request counts as one operation whatever its size (no QEMU iops-size): with it, a large
/// sequential write counted as many 4 KiB ones and the stick wrote 2 MB/s, not 8.
pub struct Limits {
    pub read_bytes_per_s: u64,
    pub write_bytes_per_s: u64,
    pub read_iops: u64,
    pub write_iops: u64,
}

impl Stick {
    pub fn limits(self) -> Option<Limits> {
        match self {
            Stick::Full => None,
            Stick::Usb2 => Some(Limits {
                read_bytes_per_s: 30_000_000,
                write_bytes_per_s: 8_000_000,
                read_iops: 1500,
                write_iops: 500,
            }),
        }
    }

    /// QEMU `-drive` options that throttle the disk to these limits (empty when full speed).
    pub fn drive_options(self) -> String {
        self.limits().map_or_else(String::new, |l| {
            format!(
                ",throttling.bps-read={},throttling.bps-write={},throttling.iops-read={},throttling.iops-write={}",
                l.read_bytes_per_s, l.write_bytes_per_s, l.read_iops, l.write_iops
            )
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stick::Full => "full",
            Stick::Usb2 => "usb2",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usb2_stick_is_throttled_and_full_speed_is_not() {
        assert_eq!(Stick::Full.drive_options(), "");
        let o = Stick::Usb2.drive_options();
        for part in [
            "throttling.bps-read=30000000",
            "throttling.bps-write=8000000",
            "throttling.iops-read=1500",
            "throttling.iops-write=500",
        ] {
            assert!(o.contains(&format!(",{part}")), "{o}");
        }
        // A 1 MiB write is one operation, so sequential writes reach bps-write.
        assert!(!o.contains("iops-size"), "{o}");
    }

    #[test]
    fn settings_from_before_the_option_boot_at_full_speed() {
        #[derive(Deserialize)]
        struct Old {
            #[serde(default)]
            stick: Stick,
        }
        let old: Old = serde_json::from_str("{}").unwrap();
        assert_eq!(old.stick, Stick::Full);
        let new: Old = serde_json::from_str(r#"{"stick": "usb2"}"#).unwrap();
        assert_eq!(new.stick, Stick::Usb2);
    }
}
