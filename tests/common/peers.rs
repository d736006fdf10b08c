//! Somebody else's implementation on the other side of a test: Python programs under
//! `tests/peers/` with the packages of `tests/peers/requirements.txt` (pymodbus, ...), which
//! are installed with pip into `target/peers-python` the first time a test needs them. A
//! misreading of a standard shared by our server and our own simulator cannot pass a test
//! whose other side is a peer.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// Where the peers' packages are installed.
fn site() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peers-python")
}

/// Installs the requirements once (several test processes may race: each installs into a
/// directory of its own and the first to rename it into place wins). An install of other
/// requirements (the file changed since) is replaced.
fn ensure_installed() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let wanted = std::fs::read_to_string(root.join("tests/peers/requirements.txt"))
        .expect("tests/peers/requirements.txt");
    let stamp = |dir: &std::path::Path| dir.join("requirements.txt");
    let installed = std::fs::read_to_string(stamp(&site())).ok();
    if *done || installed.as_deref() == Some(wanted.as_str()) {
        *done = true;
        return;
    }
    let staging = root.join(format!("target/peers-python.{}", std::process::id()));
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&staging)
        .arg("-r")
        .arg(root.join("tests/peers/requirements.txt"))
        .status()
        .expect("python3 with pip is needed for the peer tests");
    assert!(
        status.success(),
        "pip could not install tests/peers/requirements.txt"
    );
    std::fs::write(stamp(&staging), &wanted).expect("stamp the install");
    if installed.is_some() || site().is_dir() {
        // Installed for other requirements: out of the way (a racing process may have just
        // put the same ones in place; then ours goes).
        let old = root.join(format!("target/peers-python.old.{}", std::process::id()));
        if std::fs::read_to_string(stamp(&site())).ok().as_deref() != Some(wanted.as_str())
            && std::fs::rename(site(), &old).is_ok()
        {
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    if std::fs::rename(&staging, site()).is_err() {
        // Another test process installed it first.
        let _ = std::fs::remove_dir_all(&staging);
    }
    *done = true;
}

/// A running peer program; killed on drop.
pub struct Peer {
    pub child: Child,
    pub stdin: ChildStdin,
    /// Its stdout, a line at a time (read by a thread, so waiting for a line can time out).
    lines: std::sync::mpsc::Receiver<String>,
}

impl Peer {
    /// Starts `tests/peers/<script>` with `args`.
    pub fn start(script: &str, args: &[String]) -> Peer {
        ensure_installed();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .arg(root.join("tests/peers").join(script))
            .args(args)
            .env("PYTHONPATH", site())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Peer {
            child,
            stdin,
            lines,
        }
    }

    /// Waits (generously) for the peer to print `line`; panics with what it printed instead.
    pub fn expect_line(&mut self, line: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(got) if got.trim() == line => return,
                Ok(got) => seen.push(got),
                Err(_) => break,
            }
        }
        panic!("the peer did not print {line:?}; it printed {seen:?}");
    }

    /// Sends the peer one line on its stdin.
    pub fn say(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").expect("peer stdin");
        self.stdin.flush().expect("peer stdin");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
