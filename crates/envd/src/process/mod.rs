//! Process supervision: start commands (with pipes or a PTY) as a user, fan their output out
//! to every attached stream, feed them input, signal them, and report how they ended.
//!
//! Every process gets its own process group (or session, with a PTY), and signals go to the
//! whole group, so killing a `bash -c` command kills what it started too.

mod pty;
pub mod service;
mod template;

pub use template::{start_template_command, wait_until_template_ready};

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

use crate::sys::ChildSetup;
use crate::users::User;

/// An `oom_score_adj` (-1000 to 1000): added, in thousandths of the memory there is, to a
/// process's badness when the kernel's OOM killer picks its victim; -1000 is never picked,
/// 1000 always first. The [`Default`] is the neutral 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OomScoreAdj(i16);

/// Why a text is not an [`OomScoreAdj`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OomScoreAdjError {
    /// Not a decimal integer.
    #[error("{0:?} is not an integer (an oom_score_adj is from -1000 to 1000)")]
    NotAnInteger(String),
    /// An integer outside -1000..=1000.
    #[error("{0} is out of range (an oom_score_adj is from -1000 to 1000)")]
    OutOfRange(String),
}

impl OomScoreAdj {
    /// The lowest value: the OOM killer never picks the process.
    pub const MIN: Self = Self(-1000);
    /// The highest value: the OOM killer picks the process first.
    pub const MAX: Self = Self(1000);
    /// The neutral value, what processes have unless something changes it.
    pub const NEUTRAL: Self = Self(0);

    /// `value`, when it is from -1000 to 1000.
    #[must_use]
    pub fn new(value: i32) -> Option<Self> {
        i16::try_from(value)
            .ok()
            .filter(|value| (Self::MIN.0..=Self::MAX.0).contains(value))
            .map(Self)
    }

    /// The number.
    #[must_use]
    pub fn get(self) -> i32 {
        i32::from(self.0)
    }

    /// The decimal text that `/proc/<pid>/oom_score_adj` takes, in a fixed buffer (nothing
    /// allocated): the buffer and how many of its bytes the text is.
    #[must_use]
    pub fn to_ascii(self) -> ([u8; 5], usize) {
        let mut text = [0u8; 5];
        let mut len = 0;
        if self.0 < 0 {
            text[0] = b'-';
            len = 1;
        }
        let magnitude = self.0.unsigned_abs();
        for divisor in [1000, 100, 10, 1] {
            // No leading zeros; a digit is below 10, so `as u8` keeps it.
            if magnitude >= divisor || divisor == 1 {
                text[len] = b'0' + (magnitude / divisor % 10) as u8;
                len += 1;
            }
        }
        (text, len)
    }
}

impl std::fmt::Display for OomScoreAdj {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for OomScoreAdj {
    type Err = OomScoreAdjError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let out_of_range = || OomScoreAdjError::OutOfRange(text.trim().to_owned());
        let value: i32 =
            text.trim()
                .parse()
                .map_err(|error: std::num::ParseIntError| match error.kind() {
                    std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                        out_of_range()
                    }
                    _ => OomScoreAdjError::NotAnInteger(text.to_owned()),
                })?;
        Self::new(value).ok_or_else(out_of_range)
    }
}

/// Output chunk size: one read, one event.
const CHUNK: usize = 32 * 1024;
/// Events buffered per attached stream before the process's output waits for the client.
const STREAM_BUFFER: usize = 64;
/// After the process exits, how long output from what it left behind (holding its pipes)
/// is still collected before the end is reported.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// One output pipe of a process and the kind of chunk it yields.
type OutputPipe = (Box<dyn AsyncRead + Send + Unpin>, fn(Vec<u8>) -> Output);

/// What to start.
#[derive(Clone, Debug)]
pub struct StartSpec {
    /// Program.
    pub cmd: String,
    /// Arguments.
    pub args: Vec<String>,
    /// The complete environment.
    pub envs: BTreeMap<String, String>,
    /// Working directory (must exist).
    pub cwd: PathBuf,
    /// Who runs it.
    pub user: User,
    /// Tag clients can select it by.
    pub tag: Option<String>,
    /// Whether stdin is a pipe clients can write to (else `/dev/null`).
    pub stdin: bool,
    /// A terminal of (cols, rows) instead of pipes.
    pub pty: Option<(u16, u16)>,
    /// Killed at this instant (the Start call's deadline).
    pub kill_at: Option<Instant>,
    /// Its `oom_score_adj` (rather than envd's, which it would inherit).
    pub oom_score_adj: OomScoreAdj,
}

/// One output chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// From stdout.
    Stdout(Vec<u8>),
    /// From stderr.
    Stderr(Vec<u8>),
    /// From the terminal.
    Pty(Vec<u8>),
}

/// How a process ended, as E2B reports it (Go's `ProcessState` conventions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or -1 when killed by a signal.
    pub exit_code: i32,
    /// Whether it exited (rather than being killed by a signal).
    pub exited: bool,
    /// `exit status N` or `signal: killed`.
    pub status: String,
    /// A supervision error, if any.
    pub error: Option<String>,
}

/// What attached streams receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Output.
    Data(Output),
    /// The end; nothing follows.
    End(ExitInfo),
}

/// Why an operation on a process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No such process (or it has ended).
    #[error("process {0} not found")]
    NotFound(String),
    /// The process cannot take this (no stdin, no terminal, stdin closed).
    #[error("{0}")]
    Unsupported(String),
    /// The command could not be started.
    #[error("failed to start {cmd:?}")]
    Spawn {
        /// The program.
        cmd: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing input or signalling failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A supervised process.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: u32,
    spec: StartSpec,
    input: tokio::sync::Mutex<Input>,
    terminal: Option<Arc<pty::AsyncPty>>,
    streams: Mutex<Streams>,
}

#[derive(Debug)]
enum Input {
    Pipe(ChildStdin),
    Terminal(Arc<pty::AsyncPty>),
    Closed,
}

#[derive(Debug, Default)]
struct Streams {
    attached: Vec<mpsc::Sender<Event>>,
    ended: bool,
}

impl ProcessHandle {
    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What it was started with.
    #[must_use]
    pub fn spec(&self) -> &StartSpec {
        &self.spec
    }

    /// Attach a stream to its live output; `None` once it has ended.
    pub fn attach(&self) -> Option<mpsc::Receiver<Event>> {
        let mut streams = lock(&self.streams);
        if streams.ended {
            return None;
        }
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        streams.attached.push(sender);
        Some(receiver)
    }

    /// Write to its stdin (`pty == false`) or its terminal (`pty == true`).
    ///
    /// # Errors
    ///
    /// [`ProcessError::Unsupported`] when that input does not exist or is closed.
    pub async fn write_input(&self, data: &[u8], pty: bool) -> Result<(), ProcessError> {
        let mut input = self.input.lock().await;
        let result = match (&mut *input, pty) {
            (Input::Pipe(stdin), false) => stdin.write_all(data).await,
            (Input::Terminal(terminal), true) => terminal.write_all(data).await,
            (Input::Closed, _) => {
                return Err(ProcessError::Unsupported(format!(
                    "stdin of process {} is closed",
                    self.pid
                )));
            }
            (_, true) => {
                return Err(ProcessError::Unsupported(format!(
                    "process {} has no terminal",
                    self.pid
                )));
            }
            (_, false) => {
                return Err(ProcessError::Unsupported(format!(
                    "process {} reads from a terminal: send pty input",
                    self.pid
                )));
            }
        };
        result.map_err(|source| ProcessError::Io {
            what: format!("write input to process {}", self.pid),
            source,
        })
    }

    /// Close stdin: the process reads end-of-file.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Unsupported`] for a terminal process or one started without stdin.
    pub async fn close_stdin(&self) -> Result<(), ProcessError> {
        let mut input = self.input.lock().await;
        match &*input {
            Input::Pipe(_) => {
                *input = Input::Closed;
                Ok(())
            }
            Input::Closed => Ok(()),
            Input::Terminal(_) => Err(ProcessError::Unsupported(format!(
                "process {} reads from a terminal; send Ctrl-D as input instead",
                self.pid
            ))),
        }
    }

    /// Send `signal` to its process group.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Io`] when the signal cannot be delivered for another reason than the
    /// group being gone.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<(), ProcessError> {
        let Some(group) = rustix::process::Pid::from_raw(self.pid as i32) else {
            return Ok(());
        };
        match rustix::process::kill_process_group(group, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(errno) => Err(ProcessError::Io {
                what: format!("signal process {}", self.pid),
                source: errno.into(),
            }),
        }
    }

    /// Resize its terminal.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Unsupported`] without a terminal.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), ProcessError> {
        let terminal = self.terminal.as_ref().ok_or_else(|| {
            ProcessError::Unsupported(format!("process {} has no terminal", self.pid))
        })?;
        pty::resize(terminal.as_fd(), cols, rows).map_err(|source| ProcessError::Io {
            what: format!("resize the terminal of process {}", self.pid),
            source,
        })
    }

    async fn publish(&self, event: Event) {
        let attached = {
            let mut streams = lock(&self.streams);
            if matches!(event, Event::End(_)) {
                streams.ended = true;
                std::mem::take(&mut streams.attached)
            } else {
                streams.attached.clone()
            }
        };
        let mut gone = false;
        for stream in &attached {
            // A stream that falls behind holds the process's output back (no event is ever
            // dropped); a stream whose client left is skipped.
            gone |= stream.send(event.clone()).await.is_err();
        }
        if gone {
            lock(&self.streams)
                .attached
                .retain(|stream| !stream.is_closed());
        }
    }
}

/// All supervised processes, by pid.
#[derive(Debug, Default)]
pub struct Supervisor {
    processes: Arc<Mutex<HashMap<u32, Arc<ProcessHandle>>>>,
}

impl Supervisor {
    /// Start `spec`; returns the process and a stream attached before any output was read.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Spawn`] when the program cannot be started.
    pub fn start(
        &self,
        spec: StartSpec,
    ) -> Result<(Arc<ProcessHandle>, mpsc::Receiver<Event>), ProcessError> {
        let spawn_error = |source| ProcessError::Spawn {
            cmd: spec.cmd.clone(),
            source,
        };
        let mut command = tokio::process::Command::new(&spec.cmd);
        command
            .args(&spec.args)
            .env_clear()
            .envs(&spec.envs)
            .current_dir(&spec.cwd)
            .kill_on_drop(false);
        let mut setup = ChildSetup::for_user(&spec.user);
        setup.oom_score_adj = spec.oom_score_adj;
        let terminal = match spec.pty {
            Some((cols, rows)) => {
                let pair = pty::open(cols, rows).map_err(spawn_error)?;
                let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
                command
                    .stdin(stdio(&pair.slave).map_err(spawn_error)?)
                    .stdout(stdio(&pair.slave).map_err(spawn_error)?)
                    .stderr(stdio(&pair.slave).map_err(spawn_error)?);
                // A new session whose controlling terminal is the PTY (stdin by then).
                setup.stdin_is_controlling_tty = true;
                Some(Arc::new(
                    pty::AsyncPty::new(pair.master).map_err(spawn_error)?,
                ))
            }
            None => {
                command
                    .stdin(if spec.stdin {
                        Stdio::piped()
                    } else {
                        Stdio::null()
                    })
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                None
            }
        };
        setup.install(&mut command);
        let mut child = command.spawn().map_err(spawn_error)?;
        // The command (and the slave fds it held) must go now: the terminal reports its end
        // only once no slave fd is open.
        drop(command);
        let pid = child.id().unwrap_or_default();
        let input = match (&terminal, child.stdin.take()) {
            (Some(terminal), _) => Input::Terminal(Arc::clone(terminal)),
            (None, Some(stdin)) => Input::Pipe(stdin),
            (None, None) => Input::Closed,
        };
        let outputs: Vec<OutputPipe> = match &terminal {
            Some(_) => Vec::new(),
            None => {
                let mut outputs: Vec<OutputPipe> = Vec::new();
                if let Some(stdout) = child.stdout.take() {
                    outputs.push((Box::new(stdout), Output::Stdout));
                }
                if let Some(stderr) = child.stderr.take() {
                    outputs.push((Box::new(stderr), Output::Stderr));
                }
                outputs
            }
        };
        let kill_at = spec.kill_at;
        let handle = Arc::new(ProcessHandle {
            pid,
            spec,
            input: tokio::sync::Mutex::new(input),
            terminal: terminal.clone(),
            streams: Mutex::new(Streams::default()),
        });
        let first = handle.attach().expect("a new process has not ended");
        lock(&self.processes).insert(pid, Arc::clone(&handle));

        let processes = Arc::clone(&self.processes);
        let supervised = Arc::clone(&handle);
        tokio::spawn(async move {
            let readers = tokio::spawn(pump_output(Arc::clone(&supervised), outputs, terminal));
            let status = match kill_at {
                Some(deadline) => {
                    tokio::select! {
                        status = child.wait() => status,
                        () = tokio::time::sleep_until(deadline.into()) => {
                            let _ = supervised.signal(rustix::process::Signal::KILL);
                            child.wait().await
                        }
                    }
                }
                None => child.wait().await,
            };
            // Output the process wrote before it exited is in its pipes: collect it, but do
            // not wait for children that outlive it and keep the pipes open.
            if tokio::time::timeout(DRAIN_AFTER_EXIT, readers)
                .await
                .is_err()
            {
                tracing::debug!(
                    pid,
                    "process exited; what it left running still holds its output"
                );
            }
            let end = exit_info(status);
            lock(&processes).remove(&supervised.pid);
            supervised.publish(Event::End(end)).await;
        });
        Ok((handle, first))
    }

    /// The process with `pid`.
    ///
    /// # Errors
    ///
    /// [`ProcessError::NotFound`].
    pub fn by_pid(&self, pid: u32) -> Result<Arc<ProcessHandle>, ProcessError> {
        lock(&self.processes)
            .get(&pid)
            .cloned()
            .ok_or_else(|| ProcessError::NotFound(format!("with pid {pid}")))
    }

    /// The oldest running process tagged `tag`.
    ///
    /// # Errors
    ///
    /// [`ProcessError::NotFound`].
    pub fn by_tag(&self, tag: &str) -> Result<Arc<ProcessHandle>, ProcessError> {
        lock(&self.processes)
            .values()
            .filter(|process| process.spec.tag.as_deref() == Some(tag))
            .min_by_key(|process| process.pid)
            .cloned()
            .ok_or_else(|| ProcessError::NotFound(format!("with tag {tag:?}")))
    }

    /// Every running process, by pid.
    #[must_use]
    pub fn list(&self) -> Vec<Arc<ProcessHandle>> {
        let mut all: Vec<_> = lock(&self.processes).values().cloned().collect();
        all.sort_by_key(|process| process.pid);
        all
    }
}

async fn pump_output(
    handle: Arc<ProcessHandle>,
    outputs: Vec<OutputPipe>,
    terminal: Option<Arc<pty::AsyncPty>>,
) {
    if let Some(terminal) = terminal {
        let mut buf = vec![0_u8; CHUNK];
        while let Ok(n) = terminal.read(&mut buf).await {
            if n == 0 {
                break;
            }
            handle
                .publish(Event::Data(Output::Pty(buf[..n].to_vec())))
                .await;
        }
        return;
    }
    let readers = outputs.into_iter().map(|(mut reader, wrap)| {
        let handle = Arc::clone(&handle);
        async move {
            let mut buf = vec![0_u8; CHUNK];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                handle.publish(Event::Data(wrap(buf[..n].to_vec()))).await;
            }
        }
    });
    futures::future::join_all(readers).await;
}

fn exit_info(status: std::io::Result<std::process::ExitStatus>) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    let (exit_code, exited, status) = match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (code, true, format!("exit status {code}")),
            (None, Some(signal)) => (-1, false, format!("signal: {}", signal_name(signal))),
            (None, None) => (-1, false, "unknown".to_owned()),
        },
        Err(wait_error) => (-1, false, format!("wait: {wait_error}")),
    };
    // E2B's envd reports Go's `cmd.Wait()` error here, which is the status itself for
    // anything but a clean exit; clients show it (`CommandExitException.error`).
    let error = (exit_code != 0 || !exited).then(|| status.clone());
    ExitInfo {
        exit_code,
        exited,
        status,
        error,
    }
}

/// Signal descriptions as Go prints them (`signal: killed`), which is what E2B clients show.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "hangup",
        libc::SIGINT => "interrupt",
        libc::SIGQUIT => "quit",
        libc::SIGILL => "illegal instruction",
        libc::SIGTRAP => "trace/breakpoint trap",
        libc::SIGABRT => "aborted",
        libc::SIGBUS => "bus error",
        libc::SIGFPE => "floating point exception",
        libc::SIGKILL => "killed",
        libc::SIGUSR1 => "user defined signal 1",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGUSR2 => "user defined signal 2",
        libc::SIGPIPE => "broken pipe",
        libc::SIGALRM => "alarm clock",
        libc::SIGTERM => "terminated",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a plain collection update: poison carries no meaning.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raise this test process's `oom_score_adj` to at least `floor` (never lowers it: that
    /// would take privileges and outlive the test); its value afterwards.
    fn raise_own_oom_score_adj(floor: i32) -> i32 {
        let path = "/proc/self/oom_score_adj";
        let current: i32 = std::fs::read_to_string(path)
            .expect("no /proc")
            .trim()
            .parse()
            .unwrap();
        if current < floor {
            std::fs::write(path, floor.to_string()).expect("raising is always allowed");
        }
        current.max(floor)
    }

    /// What `cat /proc/self/oom_score_adj` prints when envd starts it as `user`, asked for
    /// `oom_score_adj`.
    async fn child_oom_score_adj(
        user: User,
        pty: Option<(u16, u16)>,
        oom_score_adj: OomScoreAdj,
    ) -> String {
        let supervisor = Supervisor::default();
        let (_, mut events) = supervisor
            .start(StartSpec {
                cmd: "/bin/cat".into(),
                args: vec!["/proc/self/oom_score_adj".into()],
                envs: BTreeMap::new(),
                cwd: "/".into(),
                user,
                tag: None,
                stdin: false,
                pty,
                kill_at: None,
                oom_score_adj,
            })
            .unwrap();
        let mut out = Vec::new();
        loop {
            match events
                .recv()
                .await
                .expect("the stream ends with an End event")
            {
                Event::Data(Output::Stdout(data) | Output::Pty(data)) => out.extend(data),
                Event::Data(Output::Stderr(data)) => {
                    panic!("cat failed: {}", String::from_utf8_lossy(&data))
                }
                Event::End(end) => {
                    assert_eq!(end.exit_code, 0, "{end:?}");
                    break;
                }
            }
        }
        String::from_utf8(out).unwrap().trim().to_owned()
    }

    /// Every spawn path gives the command `oom_score_adj`, printed as `expected`: pipes, a
    /// terminal, and (as root) another user.
    async fn check_every_path(oom_score_adj: OomScoreAdj, expected: &str) {
        let me = rustix::process::geteuid().as_raw();
        let cases = [
            (me, None, "pipes"),
            (me, Some((80, 24)), "terminal"),
            // After the switch to another uid the child is no longer dumpable and its /proc
            // files are root's: the write must come before it.
            (65_534, None, "as nobody"),
            (65_534, Some((80, 24)), "as nobody on a terminal"),
        ];
        for (uid, pty, what) in cases {
            if uid != me && me != 0 {
                continue;
            }
            assert_eq!(
                child_oom_score_adj(crate::as_user::tests::someone(uid), pty, oom_score_adj).await,
                expected,
                "{what}, asked for {oom_score_adj}"
            );
        }
    }

    /// envd runs with a protective `oom_score_adj` in a sandbox; what it starts must not
    /// inherit it. The value given up here is a raised one (lowering our own would take
    /// privileges; the sandbox tests of firkin-linux check the lowered case), which shows the
    /// reset happens on every spawn path.
    #[tokio::test]
    async fn commands_start_with_a_neutral_oom_score_adj() {
        assert!(raise_own_oom_score_adj(500) >= 500);
        check_every_path(OomScoreAdj::NEUTRAL, "0").await;
    }

    /// Where the driver cannot lower envd's `oom_score_adj`, it has envd raise its commands'
    /// instead (`--child-oom-score-adj 500`): above envd's own value, on every path.
    #[tokio::test]
    async fn commands_start_with_the_configured_oom_score_adj() {
        let own = raise_own_oom_score_adj(500);
        assert!(own < 700, "this test process is at {own} already");
        check_every_path(OomScoreAdj::new(700).unwrap(), "700").await;
        // Below envd's own value but not below its minimum (0, nobody privileged set one): a
        // lowering that needs no privilege either.
        check_every_path(OomScoreAdj::new(300).unwrap(), "300").await;
    }

    #[test]
    fn oom_score_adj_is_formatted_without_allocating_and_parsed_strictly() {
        for value in [
            -1000, -999, -100, -10, -5, 0, 7, 10, 99, 100, 500, 999, 1000,
        ] {
            let adj = OomScoreAdj::new(value).unwrap();
            let (text, len) = adj.to_ascii();
            assert_eq!(&text[..len], value.to_string().as_bytes(), "{value}");
            assert_eq!(adj.to_string(), value.to_string());
            assert_eq!(value.to_string().parse::<OomScoreAdj>(), Ok(adj));
            assert_eq!(adj.get(), value);
        }
        assert_eq!(OomScoreAdj::default(), OomScoreAdj::NEUTRAL);
        assert_eq!(OomScoreAdj::new(1001), None);
        assert_eq!(OomScoreAdj::new(-1001), None);
        assert_eq!(
            "1001".parse::<OomScoreAdj>(),
            Err(OomScoreAdjError::OutOfRange("1001".into()))
        );
        assert_eq!(
            "-99999999999999".parse::<OomScoreAdj>(),
            Err(OomScoreAdjError::OutOfRange("-99999999999999".into()))
        );
        for bad in ["", "abc", "1.5", "+-1", "0x10"] {
            assert_eq!(
                bad.parse::<OomScoreAdj>(),
                Err(OomScoreAdjError::NotAnInteger(bad.into())),
                "{bad:?}"
            );
        }
    }
}
