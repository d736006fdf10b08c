//! A small WebDriver (W3C HTTP protocol) client over ureq, enough to drive the console in
//! headless Chromium: one `chromedriver` per [`Browser`] on a free port, one session, killed
//! on drop. Browser tests run one at a time (a process-wide lock), so a loaded 2-core machine
//! never has several Chromiums competing.
//!
//! Waiting is "until the DOM shows it or `DEADLINE` passes", never a fixed sleep.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};

use super::{free_port, wait_for, wait_until};

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A WebDriver error answer (`{"value":{"error","message"}}`) or a transport failure.
#[derive(Debug)]
pub struct WdError {
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

/// `name` found on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver (`$CHROMEDRIVER` or `chromedriver` on PATH) and a headless
    /// Chromium session (`$CHROME_BIN`, else chromium / chromium-browser / google-chrome on
    /// PATH, else whatever chromedriver finds).
    pub fn start() -> Browser {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let driver_bin = std::env::var_os("CHROMEDRIVER")
            .map(PathBuf::from)
            .or_else(|| on_path("chromedriver"))
            .expect("chromedriver not found: apt-get install chromium-driver, or set CHROMEDRIVER");
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver_bin.display()));
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
            _turn: turn,
        };
        let status_url = format!("{}/status", browser.base);
        wait_for("chromedriver to be ready", || {
            if let Ok(Some(exit)) = browser.driver.try_wait() {
                panic!("chromedriver exited with {exit} (port {port} taken?)");
            }
            let r = ureq::get(&status_url)
                .timeout(Duration::from_secs(2))
                .call()
                .ok()?;
            let v: Value = r.into_json().ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        });
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--disable-extensions",
                "--no-first-run",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", browser._profile.path().display()),
            ]
        });
        let chrome = std::env::var_os("CHROME_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                ["chromium", "chromium-browser", "google-chrome"]
                    .iter()
                    .find_map(|n| on_path(n))
            });
        if let Some(bin) = chrome {
            options["binary"] = json!(bin.display().to_string());
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
        }}});
        let answer = browser
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("start a Chromium session: {e}"));
        browser.session = answer["sessionId"]
            .as_str()
            .expect("sessionId in the new-session answer")
            .to_string();
        browser
    }

    /// One WebDriver command; `path` below the server (`/session...`). Answers `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        let req = ureq::request(method, &format!("{}{}", self.base, path))
            .timeout(Duration::from_secs(90));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => {
                return Err(WdError {
                    error: "transport".into(),
                    message: e.to_string(),
                })
            }
        };
        let v: Value = resp.into_json().map_err(|e| WdError {
            error: "bad answer".into(),
            message: e.to_string(),
        })?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            return Err(WdError {
                error: error.to_string(),
                message: value["message"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(value)
    }

    fn session_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WdError> {
        self.call(method, &format!("/session/{}{}", self.session, path), body)
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    pub fn script(&self, script: &str, args: Vec<Value>) -> Result<Value, WdError> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` and panics on a WebDriver error.
    pub fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.script(script, args)
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    fn find(&self, css: &str) -> Result<String, WdError> {
        let v = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| WdError {
                error: "bad answer".into(),
                message: format!("no element reference in {v}"),
            })
    }

    /// Whether the first element matching `css` exists and is rendered (not hidden).
    pub fn visible(&self, css: &str) -> bool {
        self.script(
            "const e = document.querySelector(arguments[0]); \
             return !!e && e.getClientRects().length > 0;",
            vec![json!(css)],
        )
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
    }

    /// The rendered text of the first element matching `css`, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        self.script(
            "const e = document.querySelector(arguments[0]); \
             return e ? (e.innerText !== undefined && e.getClientRects().length ? e.innerText : e.textContent) : null;",
            vec![json!(css)],
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
    }

    /// Waits until `css` is visible.
    pub fn wait_visible(&self, css: &str) {
        if wait_until(|| self.visible(css).then_some(())).is_none() {
            panic!(
                "timed out waiting for {css} to be visible\npage:\n{}",
                self.page_text()
            );
        }
    }

    /// Waits until `css` is visible and its text satisfies `pred`; returns the text.
    pub fn wait_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut last = None;
        let found = wait_until(|| {
            let t = self.text(css).filter(|_| self.visible(css));
            last = t.clone();
            t.filter(|t| pred(t))
        });
        found.unwrap_or_else(|| {
            panic!(
                "timed out waiting for {css} to show {what}; it shows {last:?}\npage:\n{}",
                self.page_text()
            )
        })
    }

    /// Clicks `css` like a user (WebDriver element click), retrying while the element is
    /// missing, hidden or replaced by a re-render.
    pub fn click(&self, css: &str) {
        let mut last = None;
        let done = wait_until(|| {
            let r = self.find(css).and_then(|id| {
                self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})))
            });
            match r {
                Ok(_) => Some(()),
                Err(e) => {
                    last = Some(e.to_string());
                    None
                }
            }
        });
        if done.is_none() {
            panic!(
                "could not click {css}: {last:?}\npage:\n{}",
                self.page_text()
            );
        }
    }

    /// Types `text` into the input `css` (cleared first), with real key events.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = wait_for(&format!("{css} to exist"), || self.find(css).ok());
        self.session_call("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Selects the option with `value` of the `<select>` `css` and fires `change`.
    pub fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"));
    }

    /// The page's visible text, for failure messages.
    pub fn page_text(&self) -> String {
        self.script(
            "return document.body ? document.body.innerText : '';",
            vec![],
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
