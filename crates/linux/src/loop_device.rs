//! Loop block devices made with the kernel's own calls.
//!
//! `mount -o loop` took about 15 ms per sandbox disk here: a process to start, loop devices
//! to scan in `/sys`, then `losetup`'s and `mount`'s own work. The kernel needs three calls:
//! `LOOP_CTL_GET_FREE` on `/dev/loop-control` for a free device, `LOOP_CONFIGURE` (Linux
//! 5.8) to back it by the image, and `mount(2)`. The device is set to clear itself
//! (`LO_FLAGS_AUTOCLEAR`) once nothing holds it open: its mount holds it, so unmounting the
//! disk frees it, as with `mount -o loop`.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

/// `LOOP_CTL_GET_FREE` (linux/loop.h).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `LOOP_CONFIGURE` (linux/loop.h).
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// `LO_FLAGS_AUTOCLEAR`: detach the backing file when the device is last closed.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// How often a device another process took between the two calls is asked for again.
const ATTEMPTS: usize = 16;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    size_limit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device backed by a file. Held open by this value until it is mounted (the mount
/// then holds it); it clears itself once nothing holds it.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    _device: File,
}

impl LoopDevice {
    /// Backs a free loop device by `image`, read-write.
    ///
    /// # Errors
    ///
    /// The image or `/dev/loop-control` cannot be opened, the kernel has no
    /// `LOOP_CONFIGURE` (`EINVAL` or `ENOTTY` before Linux 5.8), or no device stayed free.
    pub fn attach(image: &Path) -> io::Result<Self> {
        let backing = OpenOptions::new().read(true).write(true).open(image)?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")?;
        let fd = u32::try_from(backing.as_raw_fd()).map_err(io::Error::other)?;
        for _ in 0..ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument; it returns a device number or -1.
            let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if number < 0 {
                return Err(io::Error::last_os_error());
            }
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = OpenOptions::new().read(true).write(true).open(&path)?;
            let config = LoopConfig {
                fd,
                block_size: 0,
                info: LoopInfo64 {
                    device: 0,
                    inode: 0,
                    rdevice: 0,
                    offset: 0,
                    size_limit: 0,
                    number: 0,
                    encrypt_type: 0,
                    encrypt_key_size: 0,
                    flags: LO_FLAGS_AUTOCLEAR,
                    file_name: [0; 64],
                    crypt_name: [0; 64],
                    encrypt_key: [0; 32],
                    init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: `config` is a `struct loop_config` laid out as linux/loop.h has it,
            // alive for the whole call, and the kernel only reads it; `fd` is open.
            let configured = unsafe {
                libc::ioctl(
                    device.as_raw_fd(),
                    LOOP_CONFIGURE,
                    std::ptr::from_ref(&config),
                )
            };
            if configured == 0 {
                return Ok(Self {
                    path,
                    _device: device,
                });
            }
            let error = io::Error::last_os_error();
            // Another process configured this device between the two calls: ask again.
            if error.raw_os_error() != Some(libc::EBUSY) {
                return Err(error);
            }
        }
        Err(io::Error::other(format!(
            "no loop device stayed free in {ATTEMPTS} attempts"
        )))
    }

    /// The device node, `/dev/loop<N>`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_laid_out_as_the_kernel_reads_it() {
        // linux/loop.h: loop_info64 is 232 bytes, loop_config 304.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn a_device_is_backed_by_its_file_and_clears_itself() {
        if !firkin_test_support::root_or_skip("loop device test") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let device = LoopDevice::attach(&image).unwrap();
        let name = device
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let backing = format!("/sys/block/{name}/loop/backing_file");
        assert_eq!(
            std::fs::read_to_string(&backing).unwrap().trim(),
            image.to_str().unwrap()
        );
        drop(device);
        // Nothing holds it any more: the kernel detaches it (on a work queue).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(&backing)
            .is_ok_and(|file| file.trim() == image.to_str().unwrap())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} still backed by the image"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
