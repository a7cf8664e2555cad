//! How the driver (and its benchmark) sees that a sandbox's envd is up: plain HTTP/1.1
//! `GET /health` until it answers 204.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The interval between two `/health` probes while a sandbox starts. A refused connect costs
/// microseconds; a coarse poll adds its interval to every create (2 ms cost 1.6 ms at the
/// median).
pub const READY_POLL: Duration = Duration::from_micros(200);

/// One HTTP/1.1 request (`request` is the whole text); the status code of the answer.
pub fn request(address: SocketAddr, request: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\r\n";

/// Whether envd answers `GET /health` with 204 now.
pub fn is_healthy(address: SocketAddr) -> bool {
    request(address, HEALTH) == Some(204)
}

/// `GET /health` every `poll` until it answers 204 (`true`) or `timeout` passes (`false`).
pub fn wait_until_healthy(address: SocketAddr, timeout: Duration, poll: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if is_healthy(address) {
            return true;
        }
        std::thread::sleep(poll);
    }
    false
}
