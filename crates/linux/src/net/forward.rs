//! `net.ipv4.ip_forward`, the one host sysctl the slots change, and putting it back.
//!
//! Masqueraded egress needs the host to forward IPv4. Linux checks forwarding on the *input*
//! device of each routed packet (`net.ipv4.conf.<if>.forwarding`): a sandbox's packets come in
//! on its veth, but the replies come in on whichever interface carries the route to the
//! outside (the uplink, a VPN, a bridge), which changes under the daemon's feet (checked in
//! three namespaces: with `all` off, a forwarded connection works only when both the
//! sandbox-side and the uplink-side interface forward). So the setting cannot be scoped to
//! firkin's own interfaces: firkin writes `net.ipv4.ip_forward=1`,
//! which sets `net.ipv4.conf.all.forwarding` and with it every interface's and the default for
//! new ones. **That is host-wide**: the host then forwards between all its interfaces as its
//! other firewall rules allow.
//!
//! firkin only turns it on, when a slot with egress is made, and only when it is off. Then it
//! records the value it replaced in [`RECORD`] (under `/run`, so a reboot forgets it with
//! the setting) before writing. [`super::SlotPool::shutdown`] restores the recorded value when
//! its pool hands out no slot any more and no firkin veth (`fk*`, any instance's) is left on
//! the host: live sandboxes outlive their daemon and keep their egress, and whichever daemon
//! shuts down last puts the setting back. A host that needs forwarding for something else
//! (Docker, a router) should set it persistently (`sysctl.d`) before firkin starts; firkin
//! then never changes it.

use std::path::{Path, PathBuf};

use super::NetError;
use super::addr::HOST_IF_PREFIX;

/// The sysctl: `net.ipv4.ip_forward`.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Where firkin records the value of [`IP_FORWARD`] it replaced, host-wide (the setting is).
pub const RECORD: &str = "/run/firkin/ip_forward.before";

/// The sysctl file and the record of its replaced value (tests point them at temporary files).
#[derive(Clone, Debug)]
pub(crate) struct IpForward {
    sysctl: PathBuf,
    record: PathBuf,
}

impl IpForward {
    /// The host's.
    pub(crate) fn host() -> Self {
        Self {
            sysctl: IP_FORWARD.into(),
            record: RECORD.into(),
        }
    }

    /// Turns forwarding on unless it is; records the replaced value first (unless a record
    /// exists: the first value replaced is the one to restore).
    pub(crate) fn enable(&self) -> Result<(), NetError> {
        let before = self.read()?;
        if before == "1" {
            return Ok(());
        }
        if !self.record.exists() {
            self.write_record(&before)?;
        }
        write(&self.sysctl, "1")
    }

    /// Puts back the recorded value and removes the record, unless `others_live` (slots of
    /// any instance still exist) or there is no record. Returns the value restored.
    pub(crate) fn restore(&self, others_live: bool) -> Result<Option<String>, NetError> {
        if others_live {
            return Ok(None);
        }
        let before = match std::fs::read_to_string(&self.record) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.record_error("read", source)),
        };
        // Only a value this code could have replaced: anything else means the record is not ours.
        let restored = if before == "0" {
            write(&self.sysctl, &before)?;
            Some(before)
        } else {
            tracing::warn!(record = %self.record.display(), %before, "ignoring an unexpected record");
            None
        };
        std::fs::remove_file(&self.record).map_err(|e| self.record_error("remove", e))?;
        Ok(restored)
    }

    fn read(&self) -> Result<String, NetError> {
        std::fs::read_to_string(&self.sysctl)
            .map(|v| v.trim().to_owned())
            .map_err(|source| NetError::Sysctl {
                path: self.sysctl.clone(),
                step: "read".into(),
                source,
            })
    }

    fn write_record(&self, before: &str) -> Result<(), NetError> {
        if let Some(dir) = self.record.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| self.record_error("create the directory of", e))?;
        }
        std::fs::write(&self.record, before).map_err(|e| self.record_error("write", e))
    }

    fn record_error(&self, step: &'static str, source: std::io::Error) -> NetError {
        NetError::SysctlRecord {
            path: self.record.clone(),
            step,
            source,
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(|source| NetError::Sysctl {
        path: path.to_owned(),
        step: format!("write {value} to"),
        source,
    })
}

/// Whether any firkin host-side veth (`fk*`, of any instance) exists on the host.
pub(crate) fn firkin_veths_exist() -> bool {
    std::fs::read_dir("/sys/class/net").is_ok_and(|dir| {
        dir.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(HOST_IF_PREFIX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(value: &str) -> (tempfile::TempDir, IpForward) {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("ip_forward");
        std::fs::write(&sysctl, format!("{value}\n")).unwrap();
        let fwd = IpForward {
            sysctl,
            record: dir.path().join("run/ip_forward.before"),
        };
        (dir, fwd)
    }

    fn value(fwd: &IpForward) -> String {
        fwd.read().unwrap()
    }

    #[test]
    fn what_firkin_turned_on_it_turns_off_once_nothing_uses_it() {
        let (_dir, fwd) = files("0");
        fwd.enable().unwrap();
        assert_eq!(value(&fwd), "1");
        assert!(fwd.record.exists());
        // A second enable keeps the first record.
        fwd.enable().unwrap();
        assert_eq!(std::fs::read_to_string(&fwd.record).unwrap(), "0");
        // Live slots anywhere keep it on.
        assert_eq!(fwd.restore(true).unwrap(), None);
        assert_eq!(value(&fwd), "1");
        assert_eq!(fwd.restore(false).unwrap().as_deref(), Some("0"));
        assert_eq!(value(&fwd), "0");
        assert!(!fwd.record.exists());
        assert_eq!(fwd.restore(false).unwrap(), None);
    }

    #[test]
    fn a_setting_that_was_on_is_never_touched() {
        let (_dir, fwd) = files("1");
        fwd.enable().unwrap();
        assert!(!fwd.record.exists());
        assert_eq!(fwd.restore(false).unwrap(), None);
        assert_eq!(value(&fwd), "1");
    }

    #[test]
    fn a_record_that_is_not_a_replaced_value_is_dropped_not_written() {
        let (_dir, fwd) = files("1");
        std::fs::create_dir_all(fwd.record.parent().unwrap()).unwrap();
        std::fs::write(&fwd.record, "garbage").unwrap();
        assert_eq!(fwd.restore(false).unwrap(), None);
        assert_eq!(value(&fwd), "1");
        assert!(!fwd.record.exists());
    }
}
