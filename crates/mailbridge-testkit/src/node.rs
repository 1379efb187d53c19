//! [`NodeService`]: a test peer written for Node (`<dir>/server.mjs`), started on a free port;
//! it prints one JSON line `{"url": "…"}` when it listens, and exits when its stdin closes
//! (so a crashed test leaves no process behind) or when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

pub(crate) struct NodeService {
    pub(crate) url: String,
    child: Child,
    // Held open: the service exits when it closes.
    _stdin: ChildStdin,
}

impl NodeService {
    /// Starts `<testkit>/<dir>/server.mjs`; `module` is a dependency that `npm ci` installs
    /// there, to tell a missing install from a failing start.
    pub(crate) fn start(dir: &str, module: &str, what: &str) -> anyhow::Result<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
        if !dir.join("node_modules").join(module).exists() {
            bail!(
                "the {what} is not installed: run ./scripts/test (or 'npm ci' in {})",
                dir.display()
            );
        }
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start node (install Node.js 20+)")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?)
            .read_line(&mut line)
            .with_context(|| format!("the {what} did not start"))?;
        let ready: Value = serde_json::from_str(&line)
            .with_context(|| format!("the {what} said {line:?} instead of its address"))?;
        let url = ready["url"].as_str().context("no url")?.to_owned();
        Ok(Self {
            url,
            child,
            _stdin: stdin,
        })
    }
}

impl Drop for NodeService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
