//! Headless Chromium driven over WebDriver, for the console's tests.
//!
//! Each test gets a `chromedriver` of its own, which cannot pick its own port: it is offered a
//! free one and says "started successfully" once it has bound it, or exits when another process
//! took it first, and then it is offered another. Readiness is its `/status` saying so. It runs
//! in a process group of its own, with the browsers it starts, so that dropping it ends them all
//! even when the test panicked before closing its session.
//!
//! A [`Browser`] keeps the page's log (console messages, uncaught errors and failed loads, from
//! chromedriver's log of the session), waits for states of the page by polling a script with a
//! deadline, and leaves a screenshot of the last page under the target directory.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::process::Lines;
use crate::workspace_root;

/// Chromium's flags: headless, as root in a container (no sandbox, no /dev/shm to speak of),
/// audio that may start without a click, and a fake microphone that needs no permission prompt.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--window-size=1280,2400",
    "--disable-crash-reporter",
    "--no-first-run",
];

/// A `chromedriver` process, killed on drop with every browser it started.
pub struct ChromeDriver {
    child: Child,
    port: u16,
    /// Its standard error, where the browsers' own output goes too.
    log: tempfile::NamedTempFile,
}

impl ChromeDriver {
    pub async fn start() -> Self {
        let binary = std::env::var("CHROMEDRIVER_BIN").unwrap_or_else(|_| "chromedriver".into());
        let log = tempfile::NamedTempFile::new().expect("a log file");
        // Port 0: chromedriver picks a free port itself and names it when it has started.
        let mut child = Command::new(&binary)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("the log file reopens"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (scripts/deps --servers installs it): {e}")
            });
        let mut stdout = Lines::follow(child.stdout.take().expect("stdout is piped"));
        let started = stdout
            .wait_for(Duration::from_secs(30), |line| {
                line.split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
            })
            .await;
        match started {
            Ok(port) => {
                let mut driver = ChromeDriver { child, port, log };
                driver.wait_until_ready().await;
                driver
            }
            Err(printed) => {
                // Dropped as a driver, so that its process group goes too.
                drop(ChromeDriver {
                    child,
                    port: 0,
                    log,
                });
                panic!("chromedriver never started: {printed}");
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Polls `/status` until chromedriver says it is ready for sessions.
    async fn wait_until_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(format!("{}/status", self.url())).send().await
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return;
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("chromedriver exited with {exit}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver never became ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGKILL to the whole group: chromedriver and the browsers it started.
    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One entry of the browser's log.
#[derive(Debug, Clone, Deserialize)]
pub struct LogEntry {
    pub level: String,
    pub message: String,
    #[serde(default)]
    pub source: String,
}

/// What a browser is started with beyond [`CHROMIUM_FLAGS`].
#[derive(Debug, Default)]
pub struct BrowserOptions {
    /// A WAV file the fake microphone plays instead of its beep.
    pub microphone: Option<PathBuf>,
}

/// A headless Chromium session on the console of the gateway at `base_url`.
pub struct Browser {
    pub client: Client,
    pub base_url: String,
    session: String,
    /// Every entry of the browser's log read so far (chromedriver hands each out once).
    log: Mutex<Vec<LogEntry>>,
    http: reqwest::Client,
    // Last, so that it outlives the session's client.
    driver: ChromeDriver,
}

impl Browser {
    pub async fn open(base_url: &str) -> Self {
        Self::open_with(base_url, BrowserOptions::default()).await
    }

    pub async fn open_with(base_url: &str, options: BrowserOptions) -> Self {
        let driver = ChromeDriver::start().await;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        if let Some(wav) = &options.microphone {
            args.push(format!(
                "--use-file-for-fake-audio-capture={}",
                wav.display()
            ));
        }
        let binary = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let capabilities = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": binary, "args": args},
        });
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.as_object().expect("an object").clone())
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| panic!("no browser session: {e}\n{}", driver.log_text()));
        let session = client
            .session_id()
            .await
            .expect("the session's id")
            .expect("a session");
        Browser {
            client,
            base_url: base_url.to_string(),
            session,
            log: Mutex::new(Vec::new()),
            http: reqwest::Client::new(),
            driver,
        }
    }

    /// Runs `scenario`, then, whether it passed or panicked, saves a screenshot of the page as
    /// `<target>/console-screenshots/<name>.png` (its path goes to the test's output) and ends the
    /// session.
    pub async fn run(self, name: &str, scenario: impl AsyncFnOnce(&Browser)) {
        let outcome = AssertUnwindSafe(scenario(&self)).catch_unwind().await;
        let saved = self.screenshot(name).await;
        // Straight to the standard error, which the test harness does not capture, so that the
        // path is kept with the output of passing tests too.
        let mut stderr = std::io::stderr();
        match saved {
            Ok(path) => {
                let _ = writeln!(stderr, "console screenshot: {}", path.display());
            }
            Err(e) => {
                let _ = writeln!(stderr, "console screenshot of {name} not saved: {e}");
            }
        }
        let Browser { client, driver, .. } = self;
        let _ = client.close().await;
        drop(driver);
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    async fn screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let png = self.client.screenshot().await.map_err(|e| e.to_string())?;
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// Opens `path` of the gateway.
    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base_url))
            .await
            .expect("the page opens");
    }

    /// Runs `script`, a function body, in the page and returns what it returns.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("the script failed: {e}\n{script}"))
    }

    /// Runs `script` (a function body) every 100 ms until it returns something other than
    /// null, false, 0 or an empty string, and returns that; fails after `within` with `what`, the
    /// last value and the page's log.
    pub async fn wait_for(&self, what: &str, within: Duration, script: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.js(script, vec![]).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                let log = self.log().await;
                panic!(
                    "the page never showed {what} within {within:?} (last: {value})\nlog: {log:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the element `css`.
    pub async fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .await
        .as_str()
        .unwrap_or_else(|| panic!("no element {css}"))
        .to_string()
    }

    /// Waits until the element `css` has text containing `part`; returns the whole text.
    pub async fn wait_for_text(&self, css: &str, part: &str, within: Duration) -> String {
        let script = format!(
            "const e = document.querySelector({}); \
             return e && e.textContent.includes({}) ? e.textContent : null;",
            json!(css),
            json!(part)
        );
        let found = self
            .wait_for(&format!("{part:?} in {css}"), within, &script)
            .await;
        found.as_str().unwrap_or_default().to_string()
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("the click lands");
    }

    /// Replaces the value of the text field `css` with `text`, typed.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("the field clears");
        field.send_keys(text).await.expect("the text is typed");
    }

    pub async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("{css} has no option {value:?}: {e}"));
    }

    /// Chooses `file` in the file input `css`.
    pub async fn choose_file(&self, css: &str, file: &Path) {
        self.find(css)
            .await
            .send_keys(&file.display().to_string())
            .await
            .expect("the file is chosen");
    }

    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Presses and releases `key` on the keyboard, wherever the focus is.
    pub async fn press(&self, key: Key) {
        let key: char = key.into();
        self.client
            .perform_actions(
                KeyActions::new("keyboard".into())
                    .then(KeyAction::Down { value: key })
                    .then(KeyAction::Up { value: key }),
            )
            .await
            .expect("the key is pressed");
    }

    /// Every entry of the browser's log so far.
    pub async fn log(&self) -> Vec<LogEntry> {
        let response = self
            .http
            .post(format!(
                "{}/session/{}/se/log",
                self.driver.url(),
                self.session
            ))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .expect("chromedriver answers");
        let body: Value = response.json().await.expect("a JSON answer");
        let fresh: Vec<LogEntry> =
            serde_json::from_value(body["value"].clone()).unwrap_or_else(|e| {
                panic!("chromedriver's log is not a list of entries ({e}): {body}")
            });
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.extend(fresh);
        log.clone()
    }

    /// The errors in the browser's log so far: console errors, uncaught exceptions, failed
    /// loads, refused policies.
    pub async fn errors(&self) -> Vec<LogEntry> {
        self.log()
            .await
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .collect()
    }
}

/// The target directory: `CARGO_TARGET_DIR` (relative to the workspace when relative), else the
/// workspace's `target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where the console's tests leave their screenshots.
pub fn screenshot_dir() -> PathBuf {
    target_dir().join("console-screenshots")
}
