//! Following what a child process prints, so that a test waits for the line in which a server
//! says it is ready (and on which port it listens) instead of guessing a port or a delay.

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use tokio::runtime::RuntimeFlavor;
use tokio::sync::mpsc;

/// The lines a child writes on one of its streams. A thread of their own reads them, so that
/// waiting for one never blocks the async runtime, and reads until the stream ends, so that the
/// child never stalls on a full pipe once nobody listens any more.
pub struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Lines {
    /// Follows `stream`.
    pub fn follow(stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                match reader.read_until(b'\n', &mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buffer).trim_end().to_string();
                        // Nobody may be listening any more; reading on keeps the pipe flowing.
                        let _ = tx.send(line);
                    }
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The value `pick` makes of the first line it accepts. Fails with everything printed so far
    /// when the stream ends first (the child exited) or `within` runs out.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => {
                    let found = pick(&line);
                    self.seen.push(line);
                    if let Some(value) = found {
                        return Ok(value);
                    }
                }
                Ok(None) => return Err(format!("it exited; it printed:\n{}", self.printed())),
                Err(_) => {
                    return Err(format!(
                        "nothing expected within {within:?}; it printed:\n{}",
                        self.printed()
                    ));
                }
            }
        }
    }

    fn printed(&self) -> String {
        self.seen.join("\n")
    }
}

/// A process's resident memory in MB, from /proc.
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// `line` without ANSI colour sequences (`ESC [ ... letter`), which loggers may add even when
/// writing to a pipe.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `f`, which blocks, also from async code: on a multi-threaded runtime the thread is
/// handed over for blocking first, so the runtime's other tasks go on meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs `future` to completion from synchronous code. Inside a runtime it must be a
/// multi-threaded one (see [`blocking`]); async callers on any runtime await the future instead.
pub fn block_on<F: Future>(future: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => blocking(|| handle.block_on(future)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(future),
    }
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn colour_sequences_are_dropped() {
        assert_eq!(
            strip_ansi("\u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:80 x"),
            "addr=127.0.0.1:80 x"
        );
    }
}
