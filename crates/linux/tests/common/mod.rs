//! Talking to a sandbox's envd in raw HTTP/1.1 from the Linux tests (no client crate: the
//! bytes are the point).

#![allow(dead_code, unreachable_pub)]

/// A `process.Process/Start` request running `sh -c script`, as one Connect streaming
/// envelope, with the access token if there is one.
pub fn start_request(token: Option<&str>, script: &str) -> Vec<u8> {
    let body = serde_json::json!({ "process": { "cmd": "/bin/sh", "args": ["-c", script] }, "stdin": false });
    let payload = body.to_string().into_bytes();
    let mut envelope = vec![0_u8];
    envelope.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    envelope.extend_from_slice(&payload);
    let token = token
        .map(|t| format!("X-Access-Token: {t}\r\n"))
        .unwrap_or_default();
    let mut request = format!(
        "POST /process.Process/Start HTTP/1.1\r\nHost: envd\r\n{token}Content-Type: application/connect+json\r\nConnect-Protocol-Version: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        envelope.len()
    )
    .into_bytes();
    request.extend_from_slice(&envelope);
    request
}

/// The stdout and exit code in a Start response (the JSON events are read as text, which is
/// enough for these tests). Panics when the stream has no `end` event.
pub fn parse_start_response(response: &str) -> (String, i32) {
    let mut stdout = Vec::new();
    for part in response.split("\"stdout\":\"").skip(1) {
        stdout.extend(base64_decode(part.split('"').next().unwrap()));
    }
    assert!(response.contains("\"end\""), "no end event: {response}");
    let exit_code = response.split("\"exitCode\":").nth(1).map_or(0, |rest| {
        rest.trim_start()
            .split(|c: char| c != '-' && !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    });
    (String::from_utf8_lossy(&stdout).into_owned(), exit_code)
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let shift = 6 * (4 - chunk.len());
            let bits = chunk
                .iter()
                .fold(0_u32, |acc, d| (acc << 6) | u32::from(*d))
                << shift;
            bits.to_be_bytes()[1..chunk.len()].to_vec()
        })
        .collect()
}
