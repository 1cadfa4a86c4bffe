//! The virtual SATA disk that stands in for a node's ceph disk: its `/dev/disk/by-id` name
//! must be exactly the one cluster.toml gives, because the image refers to the disk by it.
//!
//! QEMU's `ide-hd` on an AHCI controller answers ATA IDENTIFY with a model (40 characters,
//! "QEMU HARDDISK" unless set) and a serial number (20 characters). udev's ata_id then names
//! the disk `/dev/disk/by-id/ata-<model>_<serial>`, with runs of spaces turned into one `_`
//! and characters outside `0-9A-Za-z#+-.:=@_` replaced. So any `ata-` name made of those
//! characters can be produced by splitting it into a model and a serial that fit.

use std::fmt;

const PREFIX: &str = "/dev/disk/by-id/ata-";
const QEMU_MODEL: &str = "QEMU_HARDDISK_";
const MODEL_MAX: usize = 40;
const SERIAL_MAX: usize = 20;

/// What to give `-device ide-hd` so the guest sees the wanted by-id name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SataIdentity {
    /// `None`: QEMU's own "QEMU HARDDISK".
    pub model: Option<String>,
    pub serial: String,
}

impl SataIdentity {
    /// `serial=...[,model=...]` for `-device ide-hd`. The allowed characters include no
    /// comma, so nothing needs QEMU's `,,` escaping.
    pub fn device_properties(&self) -> String {
        match &self.model {
            None => format!("serial={}", self.serial),
            Some(m) => format!("serial={},model={m}", self.serial),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unproducible {
    pub by_id: String,
    pub reason: String,
}

impl fmt::Display for Unproducible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cannot be given to a virtual disk: {}; QEMU's SATA disks appear as \
             /dev/disk/by-id/ata-<model>_<serial> (model at most {MODEL_MAX}, serial at most \
             {SERIAL_MAX} characters of 0-9A-Za-z#+-.:=@_), e.g. ata-QEMU_HARDDISK_SATA-NODE1",
            self.by_id, self.reason
        )
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c)
}

/// The model and serial that make QEMU's disk appear as `by_id`.
pub fn sata_identity(by_id: &str) -> Result<SataIdentity, Unproducible> {
    let refuse = |reason: &str| Unproducible {
        by_id: by_id.to_string(),
        reason: reason.to_string(),
    };
    let Some(name) = by_id.strip_prefix(PREFIX) else {
        return Err(refuse(
            "only ata- names can be emulated (the rehearsal disks are SATA disks)",
        ));
    };
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        return Err(refuse(&format!("udev would replace the character {bad:?}")));
    }
    // udev collapses runs of whitespace into one '_' and trims the ends, so a name with
    // "__" or a leading/trailing '_' can never come out of it.
    if name.contains("__") || name.starts_with('_') || name.ends_with('_') {
        return Err(refuse("udev never produces a leading, trailing or doubled '_'"));
    }
    if let Some(serial) = name.strip_prefix(QEMU_MODEL)
        && !serial.is_empty()
        && serial.len() <= SERIAL_MAX
    {
        return Ok(SataIdentity {
            model: None,
            serial: serial.to_string(),
        });
    }
    // The split point does not change the name; take the rightmost one that fits.
    for (i, _) in name.match_indices('_').collect::<Vec<_>>().into_iter().rev() {
        let (model, serial) = (&name[..i], &name[i + 1..]);
        if serial.len() > SERIAL_MAX {
            break;
        }
        if model.len() <= MODEL_MAX {
            return Ok(SataIdentity {
                model: Some(model.to_string()),
                serial: serial.to_string(),
            });
        }
    }
    Err(refuse(
        "it cannot be split into <model>_<serial> with both short enough",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(by_id: &str) -> (Option<String>, String) {
        let id = sata_identity(by_id).unwrap();
        (id.model, id.serial)
    }

    #[test]
    fn qemu_names_keep_qemus_model() {
        assert_eq!(
            ok("/dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE1"),
            (None, "SATA-NODE1".to_string())
        );
        let id = sata_identity("/dev/disk/by-id/ata-QEMU_HARDDISK_SATA-NODE1").unwrap();
        assert_eq!(id.device_properties(), "serial=SATA-NODE1");
    }

    #[test]
    fn real_disk_names_become_model_and_serial() {
        // A real Samsung SSD as udev names it on hardware.
        assert_eq!(
            ok("/dev/disk/by-id/ata-Samsung_SSD_870_EVO_1TB_S6PUNX0R123456A"),
            (
                Some("Samsung_SSD_870_EVO_1TB".to_string()),
                "S6PUNX0R123456A".to_string()
            )
        );
        let id = sata_identity("/dev/disk/by-id/ata-ST1000DM003-1CH162_Z1D5ABCD").unwrap();
        assert_eq!(id.device_properties(), "serial=Z1D5ABCD,model=ST1000DM003-1CH162");
    }

    #[test]
    fn model_and_serial_lengths_are_respected() {
        // A 20-character serial fits, a 21-character one does not.
        let serial20 = "A".repeat(20);
        assert_eq!(ok(&format!("/dev/disk/by-id/ata-QEMU_HARDDISK_{serial20}")).1, serial20);
        // Too long after "QEMU_HARDDISK_": the split moves, still a valid identity.
        let (model, serial) = ok(&format!("/dev/disk/by-id/ata-QEMU_HARDDISK_X_{serial20}"));
        assert_eq!(
            (model.as_deref(), serial.as_str()),
            (Some("QEMU_HARDDISK_X"), serial20.as_str())
        );
        let err = sata_identity(&format!("/dev/disk/by-id/ata-M_{}", "B".repeat(21))).unwrap_err();
        assert!(err.reason.contains("split"), "{err}");
        let err = sata_identity(&format!("/dev/disk/by-id/ata-{}_S1", "M".repeat(41))).unwrap_err();
        assert!(err.reason.contains("split"), "{err}");
        assert!(sata_identity("/dev/disk/by-id/ata-NOSERIAL").is_err());
    }

    #[test]
    fn other_buses_and_characters_are_refused_with_the_rule() {
        for bad in [
            "/dev/disk/by-id/scsi-SATA_QEMU_HARDDISK_X",
            "/dev/disk/by-id/nvme-Samsung_SSD_980_S1",
            "/dev/disk/by-id/wwn-0x5002538e40a1b2c3",
            "/dev/sdb",
        ] {
            let err = sata_identity(bad).unwrap_err();
            assert!(err.reason.contains("only ata-"), "{bad}: {err}");
            assert!(err.to_string().contains("ata-<model>_<serial>"), "{err}");
        }
        assert!(sata_identity("/dev/disk/by-id/ata-QEMU_HARDDISK_a/b").is_err());
        assert!(sata_identity("/dev/disk/by-id/ata-QEMU_HARDDISK_a,b").is_err());
        assert!(sata_identity("/dev/disk/by-id/ata-QEMU__X").is_err());
    }
}
