//! Just enough of an envd client to run a build step: `process.Process/Start` over Connect
//! (JSON envelopes, server streaming) on the build sandbox's envd, its output handed over line
//! by line.

use std::net::SocketAddr;

use base64::Engine as _;
use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

/// A command for [`run`].
#[derive(Debug)]
pub(crate) struct Command<'a> {
    /// `/bin/bash -l -c <line>`.
    pub line: &'a str,
    /// Who runs it.
    pub user: &'a str,
    /// Where (the user's home when `None`).
    pub cwd: Option<&'a str>,
    /// Extra environment variables.
    pub envs: &'a [(String, String)],
}

/// Runs `command` on the envd at `address` (with `token`), calling `on_line` with each line of
/// its output; its exit code.
///
/// # Errors
///
/// envd could not be reached or refused the command (its words).
pub(crate) async fn run(
    address: SocketAddr,
    token: Option<&str>,
    command: &Command<'_>,
    mut on_line: impl FnMut(&str),
) -> Result<i32, String> {
    let envs: serde_json::Map<String, serde_json::Value> = command
        .envs
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut process = serde_json::json!({
        "cmd": "/bin/bash",
        "args": ["-l", "-c", command.line],
        "envs": envs,
    });
    if let Some(cwd) = command.cwd {
        process["cwd"] = cwd.into();
    }
    let body = envelope(&serde_json::json!({ "process": process, "stdin": false }));
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("reach the build sandbox's envd: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("envd: {e}"))?;
    tokio::spawn(connection);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:", command.user));
    let mut request = hyper::Request::post("/process.Process/Start")
        .header("host", "envd")
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .header("authorization", format!("Basic {basic}"));
    if let Some(token) = token {
        request = request.header("x-access-token", token);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("envd: {e}"))?;
    if !response.status().is_success() {
        let text = response
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!("envd refused the command: {text}"));
    }
    let mut buffer = BytesMut::new();
    let mut lines = Lines::default();
    let mut exit = None;
    while let Some(frame) = response.body_mut().frame().await {
        let frame = frame.map_err(|e| format!("envd: {e}"))?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
        }
        while let Some((flags, message)) = next_envelope(&mut buffer) {
            let message: serde_json::Value =
                serde_json::from_slice(&message).map_err(|e| format!("envd: {e}"))?;
            if flags & 0x02 != 0 {
                if let Some(error) = message.get("error") {
                    return Err(error["message"]
                        .as_str()
                        .unwrap_or("envd failed the command")
                        .to_owned());
                }
                continue;
            }
            let event = &message["event"];
            for stream in ["stdout", "stderr"] {
                if let Some(text) = event["data"][stream].as_str() {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .unwrap_or_default();
                    lines.push(&bytes, &mut on_line);
                }
            }
            if let Some(end) = event.get("end") {
                exit = Some(
                    end["exitCode"]
                        .as_i64()
                        .and_then(|c| i32::try_from(c).ok())
                        .unwrap_or(0),
                );
            }
        }
    }
    lines.flush(&mut on_line);
    exit.ok_or_else(|| "envd ended the command without an exit status".to_owned())
}

fn envelope(message: &serde_json::Value) -> Vec<u8> {
    let payload = message.to_string().into_bytes();
    let mut framed = vec![0_u8];
    framed.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&payload);
    framed
}

/// The next whole envelope of `buffer`: (flags, message).
fn next_envelope(buffer: &mut BytesMut) -> Option<(u8, Bytes)> {
    if buffer.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + len {
        return None;
    }
    let flags = buffer[0];
    buffer.advance(5);
    Some((flags, buffer.split_to(len).freeze()))
}

/// Output cut into lines (a line longer than 4 KiB is cut there).
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    const MAX: usize = 4096;

    fn push(&mut self, bytes: &[u8], on_line: &mut impl FnMut(&str)) {
        for byte in bytes {
            if *byte == b'\n' || self.pending.len() >= Self::MAX {
                on_line(String::from_utf8_lossy(&self.pending).trim_end_matches('\r'));
                self.pending.clear();
                if *byte == b'\n' {
                    continue;
                }
            }
            self.pending.push(*byte);
        }
    }

    fn flush(&mut self, on_line: &mut impl FnMut(&str)) {
        if !self.pending.is_empty() {
            on_line(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_cut_whole_from_a_stream() {
        let mut buffer = BytesMut::new();
        let one = envelope(&serde_json::json!({"a": 1}));
        buffer.extend_from_slice(&one[..4]);
        assert!(next_envelope(&mut buffer).is_none());
        buffer.extend_from_slice(&one[4..]);
        buffer.extend_from_slice(&[2, 0, 0, 0, 2, b'{', b'}']);
        assert_eq!(next_envelope(&mut buffer).unwrap().1, &b"{\"a\":1}"[..]);
        assert_eq!(next_envelope(&mut buffer).unwrap(), (2, Bytes::from("{}")));
        assert!(buffer.is_empty());
    }

    #[test]
    fn output_is_handed_over_in_lines() {
        let mut seen = Vec::new();
        let mut lines = Lines::default();
        lines.push(b"one\ntw", &mut |l: &str| seen.push(l.to_owned()));
        lines.push(b"o\r\nthree", &mut |l: &str| seen.push(l.to_owned()));
        lines.flush(&mut |l: &str| seen.push(l.to_owned()));
        assert_eq!(seen, ["one", "two", "three"]);
    }
}
