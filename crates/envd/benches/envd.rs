//! envd round trips measured against a real envd process (release build), through a Connect
//! JSON client as the SDKs speak it, over one keep-alive HTTP/1.1 connection:
//!
//! - `Start(/bin/true)` until its `end` event, and `Start(/bin/echo x)` until the first stdout
//!   byte (n = 1,000 each by default);
//! - the SDK's form, `/bin/bash -l -c true`, as the default user (n = 300);
//! - 100 sequential `Start(/bin/true)` calls, as one batch (10 batches);
//! - baseline in the same run: `fork`+`exec` of `/bin/true` from this process, the floor any
//!   agent pays;
//! - `/files`: a 256 MiB upload (octet-stream) and download, 5 of each, in MiB/s;
//! - envd's resident memory, idle after start and after the runs.
//!
//! Run with `cargo bench -p firkin-envd --bench envd`. `FIRKIN_BENCH_SAMPLES` changes n;
//! `FIRKIN_ENVD_BIN` runs another envd binary (e.g. the static one from `scripts/build-envd`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connectrpc::client::{ClientConfig, HttpClient};
use firkin_envd::proto::process::__buffa::oneof::process_event::Event;
use firkin_envd::proto::process::{ProcessClient, ProcessConfig, StartRequest, StartResponse};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

struct Envd {
    child: Child,
    port: u16,
}

impl Drop for Envd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envd {
    fn start() -> BenchResult<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let binary = std::env::var("FIRKIN_ENVD_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_firkin-envd").to_owned());
        let child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let envd = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("envd did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(envd)
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("VmRSS:"))
                    .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

/// Upload `size` bytes to `path` with one octet-stream POST; return the elapsed time.
fn upload(port: u16, path: &str, size: usize) -> BenchResult<Duration> {
    use std::io::{Read, Write};
    let chunk = vec![0x5a_u8; 1 << 20];
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "POST /files?path={path}&username=root HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )?;
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n])?;
        left -= n;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "upload failed: {}",
            response.lines().next().unwrap_or_default()
        )
        .into());
    }
    Ok(started.elapsed())
}

/// Download `path` (no compression asked); return (bytes, elapsed).
fn download(port: u16, path: &str) -> BenchResult<(usize, Duration)> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "GET /files?path={path}&username=root HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = vec![0_u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok((total, started.elapsed()))
}

fn request(cmd: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        process: buffa::MessageField::some(ProcessConfig {
            cmd: cmd.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        }),
        stdin: Some(false),
        ..Default::default()
    }
}

/// Run one command; return (time to first output byte, time to end).
async fn run(
    client: &ProcessClient<HttpClient>,
    request: StartRequest,
) -> BenchResult<(Option<Duration>, Duration)> {
    let started = Instant::now();
    let mut stream = client.start(request).await?;
    let mut first_output = None;
    while let Some(message) = stream.message::<StartResponse>().await? {
        let message = message.to_owned_message();
        match message
            .event
            .as_option()
            .and_then(|event| event.event.as_ref())
        {
            Some(Event::Data(_)) if first_output.is_none() => {
                first_output = Some(started.elapsed())
            }
            Some(Event::End(end)) => {
                if end.exit_code != 0 {
                    return Err(format!("command failed: {}", end.status).into());
                }
                return Ok((first_output, started.elapsed()));
            }
            _ => {}
        }
    }
    Err("stream ended without an end event".into())
}

struct Summary {
    name: String,
    samples: Vec<Duration>,
}

impl Summary {
    fn new(name: impl Into<String>, mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self {
            name: name.into(),
            samples,
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.clamp(1, self.samples.len()) - 1]
    }

    fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:<44} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            self.name,
            self.samples.len(),
            ms(self.percentile(50.0)),
            ms(self.percentile(95.0)),
            ms(self.percentile(99.0)),
            ms(*self.samples.last().unwrap_or(&Duration::ZERO)),
        );
    }
}

fn main() -> BenchResult {
    let bench = std::env::args().any(|arg| arg == "--bench");
    let n: usize = std::env::var("FIRKIN_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1000 } else { 20 });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let envd = Envd::start()?;
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = envd.rss_kib();
    let client = ProcessClient::new(
        HttpClient::plaintext(),
        ClientConfig::new(format!("http://127.0.0.1:{}", envd.port).parse()?).json(),
    );
    let summaries = runtime.block_on(async {
        for _ in 0..50 {
            run(&client, request("/bin/true", &[])).await?;
        }
        let mut baseline = Vec::with_capacity(n);
        let mut true_end = Vec::with_capacity(n);
        let mut echo_first = Vec::with_capacity(n);
        // Interleaved, so the shared host's noise falls on all three alike.
        for _ in 0..n {
            let started = Instant::now();
            Command::new("/bin/true").status()?;
            baseline.push(started.elapsed());
            true_end.push(run(&client, request("/bin/true", &[])).await?.1);
            let (first, _) = run(&client, request("/bin/echo", &["x"])).await?;
            echo_first.push(first.ok_or("echo printed nothing")?);
        }
        let mut bash = Vec::new();
        for _ in 0..(n * 3 / 10).max(10) {
            bash.push(
                run(&client, request("/bin/bash", &["-l", "-c", "true"]))
                    .await?
                    .1,
            );
        }
        let mut batches = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            for _ in 0..100 {
                run(&client, request("/bin/true", &[])).await?;
            }
            batches.push(started.elapsed());
        }
        BenchResult::Ok(vec![
            Summary::new("baseline: fork+exec /bin/true (no envd)", baseline),
            Summary::new("Start(/bin/true) -> end", true_end),
            Summary::new("Start(/bin/echo x) -> first stdout byte", echo_first),
            Summary::new("Start(/bin/bash -l -c true) -> end", bash),
            Summary::new("100 sequential Start(/bin/true), per batch", batches),
        ])
    })?;
    const FILE_MIB: usize = 256;
    let file = std::env::temp_dir().join(format!("firkin-envd-bench-{}", std::process::id()));
    let file = file.to_str().ok_or("temp path is not UTF-8")?.to_owned();
    let mut up = Vec::new();
    let mut down = Vec::new();
    for _ in 0..5 {
        up.push(upload(envd.port, &file, FILE_MIB << 20)?);
        let (bytes, elapsed) = download(envd.port, &file)?;
        if bytes < FILE_MIB << 20 {
            return Err(format!("download returned {bytes} bytes").into());
        }
        down.push(elapsed);
    }
    std::fs::remove_file(&file)?;
    let rate = |samples: &mut Vec<Duration>| {
        samples.sort();
        FILE_MIB as f64 / samples[samples.len() / 2].as_secs_f64()
    };
    let busy_rss = envd.rss_kib();
    println!(
        "machine: {} CPUs; envd {}; JSON codec; one keep-alive connection",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::env::var("FIRKIN_ENVD_BIN").unwrap_or_else(|_| "release build (dynamic)".to_owned())
    );
    println!(
        "{:<44} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "operation", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for summary in &summaries {
        summary.print();
    }
    println!(
        "/files {FILE_MIB} MiB, median of 5: upload {:.0} MiB/s, download {:.0} MiB/s",
        rate(&mut up),
        rate(&mut down)
    );
    println!("envd RSS: {idle_rss} KiB idle after start, {busy_rss} KiB after the runs");
    Ok(())
}
