//! Headless Chromium for the dashboard tests: Debian's `chromedriver` (installed with `chromium`
//! by `scripts/test.sh`), started once per test binary on a free port, and [`session`], a fresh
//! browser with its own profile directory, driven over WebDriver with fantoccini.
//!
//! ```ignore
//! let browser = browser::session(1280, 900).await;
//! browser.goto(&server.url("/ui/")).await;
//! browser.fill("#token-input", &server.admin_token).await;
//! browser.click("#token-submit").await;
//! browser.wait_text("#whoami", "admin").await;
//! browser.screenshot("signed-in").await;
//! browser.close().await;
//! ```
//!
//! Screenshots go to `target/screenshots/`; with `PATCHWORK_UPDATE_SCREENSHOTS=1` they are also
//! written to `docs/screenshots/` (the committed set).

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// How long a `wait_*` helper waits before it fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The chromedriver process, kept for the life of the test binary. It runs in a process group of
/// its own (`setsid`), under a small shell that waits for its stdin to close (this process
/// exiting closes the pipe) and then stops that group: chromedriver and every browser it started,
/// also those of tests that panicked before closing their session.
struct Driver {
    url: String,
    _shell: Child,
    _stdin: ChildStdin,
}

static DRIVER: OnceCell<Driver> = OnceCell::const_new();

async fn driver() -> &'static Driver {
    DRIVER.get_or_init(start_driver).await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn start_driver() -> Driver {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: run scripts/test.sh (it installs the Debian packages chromium and \
             chromium-driver), or `apt-get install -y chromium chromium-driver fonts-liberation`"
        );
    }
    let http = reqwest::Client::new();
    let mut last_error = String::new();
    // The port is free when chosen but could be taken before chromedriver binds it: retry.
    for _ in 0..3 {
        let port = free_port();
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(concat!(
                r#"setsid "$0" --port="$1" --allowed-ips=127.0.0.1 >/dev/null 2>&1 & pid=$!; "#,
                r#"cat >/dev/null; kill -TERM "-$pid" 2>/dev/null; wait "$pid""#
            ))
            .arg(CHROMEDRIVER)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let stdin = shell.stdin.take().expect("piped stdin");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{url}/status")).send().await
                && let Ok(body) = r.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return Driver {
                    url,
                    _shell: shell,
                    _stdin: stdin,
                };
            }
            if let Ok(Some(status)) = shell.try_wait() {
                last_error = format!("chromedriver exited: {status}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if last_error.is_empty() {
            last_error = "chromedriver not ready after 20 s".into();
        }
        drop(stdin);
        let _ = shell.wait();
    }
    panic!("could not start chromedriver: {last_error}");
}

/// A browser session: a fantoccini client plus the profile directory it owns.
pub struct Browser {
    pub client: Client,
    _profile: tempfile::TempDir,
}

/// A fresh headless Chromium with a `width`×`height` viewport (below 500 px wide: an emulated
/// phone) and an empty profile, in the light colour scheme.
pub async fn session(width: u32, height: u32) -> Browser {
    session_with(width, height, false).await
}

/// As [`session`]; `dark` makes the page see `prefers-color-scheme: dark`.
pub async fn session_with(width: u32, height: u32, dark: bool) -> Browser {
    let driver = driver().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--force-device-scale-factor=1".to_owned(),
        "--lang=en-US".to_owned(),
        format!("--window-size={width},{height}"),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    if dark {
        args.push("--force-dark-mode".to_owned());
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    let mut options = json!({ "binary": CHROMIUM, "args": args });
    if width < 500 {
        // Chromium's windows are at least 500 px wide: narrower viewports are phones, emulated.
        options["mobileEmulation"] = json!({
            "deviceMetrics": { "width": width, "height": height, "pixelRatio": 1.0, "mobile": true, "touch": true }
        });
    }
    caps.insert("goog:chromeOptions".into(), options);
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromedriver session");
    Browser {
        client,
        _profile: profile,
    }
}

/// Where screenshots go: `target/screenshots/` of this workspace.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots")
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// The first element matching `css`, waiting up to [`WAIT`] for it.
    pub async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .every(Duration::from_millis(50))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(el) => el,
            Err(e) => panic!(
                "no element {css} after {WAIT:?}: {e}\n{}",
                self.page_text().await
            ),
        }
    }

    /// Waits until the text of `css` contains `needle`; returns the text.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = el.text().await
            {
                if text.contains(needle) {
                    return text;
                }
                last = text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{css} never contained {needle:?}; last text {last:?}\npage: {}",
            self.page_text().await
        );
    }

    /// Waits until `script` (a function body) returns `true`.
    pub async fn wait_until(&self, script: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.js(script, vec![]).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "never true after {WAIT:?}: {script}\npage: {}",
            self.page_text().await
        );
    }

    /// Waits until no element matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.client.find_all(Locator::Css(css)).await {
                Ok(found) if found.is_empty() => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("{css} is still there after {WAIT:?}");
    }

    pub async fn click(&self, css: &str) {
        let el = self.wait_for(css).await;
        el.click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clears the field `css` and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self.wait_for(css).await;
        el.clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        el.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Sends keys (e.g. `Key::Control` chords) to the element `css` without clearing it.
    pub async fn keys(&self, css: &str, keys: &str) {
        let el = self.wait_for(css).await;
        el.send_keys(keys)
            .await
            .unwrap_or_else(|e| panic!("keys to {css}: {e}"));
    }

    /// The `value` property of a form field.
    pub async fn value(&self, css: &str) -> String {
        let el = self.wait_for(css).await;
        el.prop("value")
            .await
            .unwrap_or_else(|e| panic!("value of {css}: {e}"))
            .unwrap_or_default()
    }

    pub async fn text(&self, css: &str) -> String {
        let el = self.wait_for(css).await;
        el.text()
            .await
            .unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The URL's `#…` part.
    pub async fn hash(&self) -> String {
        self.js("return location.hash;", vec![])
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The whole page's visible text (for failure messages).
    pub async fn page_text(&self) -> String {
        match self
            .client
            .execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .await
        {
            Ok(v) => v.as_str().unwrap_or_default().to_owned(),
            Err(e) => format!("(page text unavailable: {e})"),
        }
    }

    /// Saves a PNG of the viewport as `target/screenshots/{name}.png` (and in `docs/screenshots/`
    /// with `PATCHWORK_UPDATE_SCREENSHOTS=1`).
    pub async fn screenshot(&self, name: &str) {
        // Let transitions and the change highlight settle into a representative frame.
        tokio::time::sleep(Duration::from_millis(120)).await;
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        let mut dirs = vec![screenshot_dir()];
        if std::env::var_os("PATCHWORK_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
            dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots"));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).expect("screenshot dir");
            std::fs::write(dir.join(format!("{name}.png")), &png).expect("write screenshot");
        }
    }

    /// Ends the session (the browser quits).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
