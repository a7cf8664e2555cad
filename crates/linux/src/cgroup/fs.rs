//! Small file helpers shared by v1 and v2: every error carries its path (and data).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::CgroupError;

/// Reads a whole cgroup file.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `data` to an existing cgroup file in one `write` (cgroupfs takes one value per write).
///
/// The file is not created: a missing knob is an error, not a new regular file.
pub(crate) fn write(path: &Path, data: &str) -> Result<(), CgroupError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(data.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            data: data.to_owned(),
            source,
        })
}

/// Creates a directory; `Ok(false)` if it was already there.
pub(crate) fn mkdir(path: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Mkdir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes a cgroup directory. Missing is success; `EBUSY` (a cgroup whose last task is
/// still exiting) is retried until `timeout`.
pub(crate) fn rmdir(path: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(50);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(source) => {
                return Err(CgroupError::Rmdir {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
}

/// The PIDs in a `cgroup.procs` file; a missing cgroup holds none.
pub(crate) fn read_procs(path: &Path) -> Result<Vec<u32>, CgroupError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_u64(path, l).map(|v| v as u32))
        .collect()
}

/// Parses one decimal number (surrounding whitespace allowed).
pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        content: text.to_owned(),
    })
}

/// Reads a file holding one number.
pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    parse_u64(path, &read(path)?)
}

/// The value of `key` in a flat-keyed file (`key value` per line), `None` if absent.
pub(crate) fn keyed(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(' ')
            && k == key
        {
            return parse_u64(path, v).map(Some);
        }
    }
    Ok(None)
}

/// Reads a flat-keyed file and returns `key`'s value; a missing file is `None`.
pub(crate) fn read_keyed(path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(text) => keyed(path, &text, key),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Polls `done` until it is true or `timeout` passes; returns whether it became true.
///
/// Starts with a 20 µs pause (freezing five processes takes ~0.3 ms) and backs off to 1 ms.
pub(crate) fn wait_until(
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(20);
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// Sends SIGKILL to `pid`; a process already gone is success.
pub(crate) fn sigkill(pid: u32, cgroup: &Path) -> Result<(), CgroupError> {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Ok(());
    };
    match rustix::process::kill_process(raw, rustix::process::Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(CgroupError::Signal {
            path: cgroup.to_owned(),
            pid,
            source: e.into(),
        }),
    }
}

/// Distinct paths in first-seen order (co-mounted v1 controllers share a directory).
pub(crate) fn distinct<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Vec<&'a PathBuf> {
    let mut out: Vec<&PathBuf> = Vec::new();
    for p in paths {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}
