//! [`Browser`]: headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), one chromedriver per browser on a free port, a fresh profile in a temp
//! dir, stopped on drop. [`screenshot_dir`] is where tests leave their pictures.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Browsers open at once over all tests of a process: each Chromium is a few processes and
/// a few hundred MB, and the machines that run the suite have two cores.
fn slots() -> &'static std::sync::Arc<Semaphore> {
    static SLOTS: OnceLock<std::sync::Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| std::sync::Arc::new(Semaphore::new(2)))
}

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    _slot: OwnedSemaphorePermit,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium behind it, with a desktop-sized window.
    pub async fn start() -> anyhow::Result<Self> {
        if !std::path::Path::new(CHROMEDRIVER).exists() {
            bail!(
                "{CHROMEDRIVER} is missing: install Debian's chromium and chromium-driver (./scripts/test does)"
            );
        }
        let slot = slots().clone().acquire_owned().await?;
        let [port] = mailbridge_testdb::spare_ports()?;
        // Its own process group, so that the browser it starts (and the browser's helpers)
        // can be ended with it: a chromedriver ended alone leaves Chromium running.
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start chromedriver")?;
        let profile = tempfile::tempdir()?;
        let browser = Self {
            client: connect(port, &profile).await?,
            driver,
            _profile: profile,
            _slot: slot,
        };
        browser.client.set_window_size(1280, 900).await?;
        Ok(browser)
    }

    /// What axe-core (npm `axe-core`, installed by `./scripts/test` in `axe/`), the usual
    /// accessibility engine, finds wrong on the page against WCAG 2 A and AA: one line per
    /// violation, with the rule, its impact and the elements it names. Empty when none.
    pub async fn accessibility_violations(&self) -> anyhow::Result<Vec<String>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("axe/node_modules/axe-core/axe.min.js");
        let axe = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (run ./scripts/test, or npm ci in crates/mailbridge-testkit/axe)",
                path.display()
            )
        })?;
        self.client.execute(&axe, vec![]).await?;
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];\
                 axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})\
                   .then(r => done(r.violations.map(v => `${v.id} (${v.impact}): ${v.help} — ` +\
                     v.nodes.map(n => n.target.join(' ')).join(', '))))\
                   .catch(e => done([`axe failed: ${e}`]));",
                vec![],
            )
            .await?;
        Ok(serde_json::from_value(found)?)
    }

    /// Opens `url` and waits for the page.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client.goto(url).await?;
        Ok(())
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no element matches {css}"))?
            .text()
            .await?)
    }

    /// The current value of the input matching `css` (what a person typed, or the page filled).
    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> anyhow::Result<String> {
        Ok(self.client.source().await?)
    }

    pub async fn value(&self, css: &str) -> anyhow::Result<String> {
        Ok(self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no element matches {css}"))?
            .prop("value")
            .await?
            .unwrap_or_default())
    }

    /// The whole page's visible text.
    pub async fn page_text(&self) -> anyhow::Result<String> {
        self.text("body").await
    }

    /// Types into the input named `name` (clearing what was there), as a person would.
    pub async fn fill(&self, name: &str, value: &str) -> anyhow::Result<()> {
        let input = self
            .client
            .find(Locator::Css(&format!("[name='{name}']")))
            .await
            .with_context(|| format!("no input named {name}"))?;
        input.clear().await?;
        input.send_keys(value).await?;
        Ok(())
    }

    /// Picks the option with `value` in the select named `name`.
    pub async fn choose(&self, name: &str, value: &str) -> anyhow::Result<()> {
        self.client
            .find(Locator::Css(&format!("select[name='{name}']")))
            .await
            .with_context(|| format!("no select named {name}"))?
            .select_by_value(value)
            .await?;
        Ok(())
    }

    /// Ticks (or unticks) the checkbox matching `css`, which leads nowhere.
    pub async fn tick(&self, css: &str) -> anyhow::Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no element matches {css}"))?
            .click()
            .await?;
        Ok(())
    }

    /// Clicks the first element matching `css` (a link or a submit button) and waits for
    /// the page it leads to.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no element matches {css}"))?;
        self.navigating(element).await
    }

    /// Clicks the button or link whose text is `label` and waits for the page it leads to.
    pub async fn press(&self, label: &str) -> anyhow::Result<()> {
        let element = self
            .client
            .find(Locator::XPath(&format!(
                "//button[normalize-space(.)='{label}'] | //a[normalize-space(.)='{label}']"
            )))
            .await
            .with_context(|| format!("no button or link labelled {label:?}"))?;
        self.navigating(element).await
    }

    /// Clicks, then waits until another document has loaded: chromedriver's click may return
    /// before the navigation a form submission starts, and reading the page then reads the
    /// old one (or half of the new one).
    async fn navigating(&self, element: fantoccini::elements::Element) -> anyhow::Result<()> {
        self.client
            .execute("window.__mailbridgeOld = true;", vec![])
            .await?;
        element.click().await?;
        for _ in 0..300 {
            let loaded = self
                .client
                .execute(
                    "return window.__mailbridgeOld === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await;
            if matches!(loaded, Ok(serde_json::Value::Bool(true))) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the click led to no new page within 15 s")
    }

    pub async fn path(&self) -> anyhow::Result<String> {
        Ok(self.client.current_url().await?.path().to_owned())
    }

    /// Saves a PNG of the window as `<screenshot_dir>/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Saves a PNG of the whole page, however long, by growing the window to fit it first.
    pub async fn full_screenshot(&self, name: &str, width: u32) -> anyhow::Result<PathBuf> {
        let height = self
            .client
            .execute(
                "return Math.ceil(document.documentElement.scrollHeight);",
                vec![],
            )
            .await?
            .as_u64()
            .unwrap_or(900);
        let (_, _, w, h) = self.client.get_window_rect().await?;
        self.client
            .execute("window.scrollTo(0, 0);", vec![])
            .await?;
        self.client
            .set_window_size(width, u32::try_from(height.clamp(400, 4000)).unwrap_or(900))
            .await?;
        let path = self.screenshot(name).await;
        self.client
            .set_window_size(
                u32::try_from(w).unwrap_or(1280),
                u32::try_from(h).unwrap_or(900),
            )
            .await?;
        path
    }

    /// Ends the browser session; the driver and what it started stop on drop.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.clone().close().await?;
        Ok(())
    }
}

impl Drop for Browser {
    /// Ends chromedriver's whole process group — the driver, Chromium and its helpers — so
    /// nothing outlives the test or writes into the profile after it is deleted.
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        for signal in ["-TERM", "-KILL"] {
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.driver.wait();
    }
}

/// Connects to the chromedriver on `port` once it listens, and opens a headless Chromium.
async fn connect(port: u16, profile: &tempfile::TempDir) -> anyhow::Result<Client> {
    // Without the background-networking switches Chromium's own connections are refused on
    // sandboxed machines and slow every page down.
    let args = [
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-breakpad".to_owned(),
        "--disable-crash-reporter".to_owned(),
        "--hide-scrollbars".to_owned(),
        "--force-device-scale-factor=1".to_owned(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
    });
    let serde_json::Value::Object(caps) = caps else {
        bail!("capabilities are an object");
    };
    let url = format!("http://127.0.0.1:{port}");
    let mut last = None;
    for _ in 0..100 {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return Ok(client),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!(
        "chromedriver on port {port} did not open a browser: {last:?}"
    ))
}

/// `<target dir>/console-screenshots`: where browser tests leave their pictures.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
            PathBuf::from,
        )
        .join("console-screenshots")
}
