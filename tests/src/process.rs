//! Running a command with a deadline and keeping what it printed.
use std::{
    fmt,
    io::Read,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// How long any one command a test runs may take before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Options every curl run gets, so a broken dataplane makes curl fail instead of hang.
const CURL_BOUNDS: [&str; 4] = ["--connect-timeout", "5", "--max-time", "10"];

/// What a finished command left behind.
#[derive(Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Exit code; `None` when a signal ended it (or the deadline did).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with everything the command printed unless it exited 0.
    #[track_caller]
    pub fn expect_success(self, what: &str) -> Self {
        assert!(self.success(), "{what}: {self:?}");
        self
    }

    /// The value of response header `name` in curl `-i` output (the last response's header
    /// block), case-insensitively.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self
            .stdout
            .split("\r\n\r\n")
            .filter(|block| block.starts_with("HTTP/"))
            .last()?;
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    /// The HTTP status of the last response in curl `-i` output.
    pub fn http_status(&self) -> Option<u16> {
        self.stdout
            .split("\r\n\r\n")
            .filter(|block| block.starts_with("HTTP/"))
            .last()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// The response body in curl `-i` output (after the last header block).
    pub fn body(&self) -> &str {
        match self.stdout.rfind("\r\n\r\n") {
            Some(end) => &self.stdout[end + 4..],
            None => &self.stdout,
        }
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = match self.code {
            Some(code) => format!("exit {code}"),
            None => "killed by a signal".to_owned(),
        };
        write!(
            f,
            "`{}` ({code})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.stdout, self.stderr
        )
    }
}

/// `curl ARGS...` run by the test process itself, outside any captured cgroup.
pub fn curl(args: &[&str]) -> Output {
    run_bounded(
        Command::new("curl").args(CURL_BOUNDS).args(args),
        COMMAND_TIMEOUT,
    )
}

/// Curl's arguments with the time bounds in front.
pub(crate) fn bounded_curl_args<'a>(args: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    CURL_BOUNDS.into_iter().chain(args.iter().copied())
}

/// Runs `cmd` to completion, or kills it (by its pid) after `timeout`. Stdin is closed.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    run_bounded_with_input(cmd, None, timeout)
}

/// [`run_bounded`] with `input` written to the command's stdin (then closed).
pub fn run_bounded_with_input(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> Output {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{command}`: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_owned();
        // From a thread, so a command that does not read cannot block the deadline below.
        thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("waiting for a killed child");
        }
        thread::sleep(Duration::from_millis(10));
    };
    // A grandchild may still hold the pipes open: give the readers a bounded moment.
    let collect = |rx: mpsc::Receiver<String>| {
        rx.recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| "<output still open after exit>".to_owned())
    };
    let mut stderr = collect(stderr);
    if timed_out {
        stderr.push_str(&format!("\n<killed after {timeout:?}>"));
    }
    Output {
        command,
        code: status.code(),
        stdout: collect(stdout),
        stderr,
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if arg.contains(' ') || arg.is_empty() {
                format!("'{arg}'")
            } else {
                arg.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curl_output(stdout: &str) -> Output {
        Output {
            command: "curl -i".into(),
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn reads_the_last_response_of_curl_i() {
        let out = curl_output(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nVia: 1.1 egress-waypoint\r\n\
             content-length: 2\r\n\r\nok",
        );
        assert_eq!(out.http_status(), Some(201));
        assert_eq!(out.header("via").as_deref(), Some("1.1 egress-waypoint"));
        assert_eq!(out.header("x-missing"), None);
        assert_eq!(out.body(), "ok");
    }

    #[test]
    fn kills_a_command_at_its_deadline() {
        let started = Instant::now();
        let out = run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(200));
        assert_eq!(out.code, None, "{out:?}");
        assert!(out.stderr.contains("killed after"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
