//! The tracking token: `[MB-7K3QZ9PA]` at the end of the subject of mail sent through
//! Mailbridge. Replies keep the subject ("Re: …"), so a reply whose client dropped the
//! In-Reply-To and References headers still finds its conversation by the token.

/// Crockford's base32: no I, L, O or U, so a token read aloud or retyped survives.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const PREFIX: &str = "[MB-";
const LEN: usize = 8;

/// A token from 40 random bits (one in a trillion chance that two emails share one; the
/// store's unique index refuses a clash rather than mixing conversations).
pub fn new_token(random: [u8; 5]) -> String {
    let bits = random
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    (0..LEN)
        .rev()
        .map(|k| char::from(ALPHABET[((bits >> (k * 5)) & 31) as usize]))
        .collect()
}

/// The subject with the token appended.
pub fn with_token(subject: &str, token: &str) -> String {
    let subject = subject.trim_end();
    if subject.is_empty() {
        format!("{PREFIX}{token}]")
    } else {
        format!("{subject} {PREFIX}{token}]")
    }
}

/// The first well-formed token in a subject, upper-cased (some clients change case).
pub fn find_token(subject: &str) -> Option<String> {
    let upper = subject.to_ascii_uppercase();
    let mut rest = upper.as_str();
    while let Some(at) = rest.find(PREFIX) {
        let candidate = &rest[at + PREFIX.len()..];
        let token = candidate.get(..LEN).unwrap_or_default();
        if token.len() == LEN
            && candidate[LEN..].starts_with(']')
            && token.bytes().all(|b| ALPHABET.contains(&b))
        {
            return Some(token.to_owned());
        }
        rest = &rest[at + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_eight_unambiguous_characters_from_all_forty_bits() {
        assert_eq!(new_token([0; 5]), "00000000");
        assert_eq!(new_token([0xff; 5]), "ZZZZZZZZ");
        assert_eq!(new_token([0, 0, 0, 0, 33]), "00000011");
        let t = new_token([0x12, 0x34, 0x56, 0x78, 0x9a]);
        assert_eq!(t.len(), 8);
        assert!(!t.contains(['I', 'L', 'O', 'U']), "{t}");
    }

    #[test]
    fn a_reply_subject_gives_the_token_back() {
        let subject = with_token("Quote for March ", "7K3QZ9PA");
        assert_eq!(subject, "Quote for March [MB-7K3QZ9PA]");
        assert_eq!(with_token("", "7K3QZ9PA"), "[MB-7K3QZ9PA]");
        for reply in [
            format!("Re: {subject}"),
            format!("AW: RE: Fwd: {subject} (urgent)"),
            "re: quote for march [mb-7k3qz9pa]".to_owned(),
            "[MB-12] [MB-7K3QZ9PA]".to_owned(),
            "[MB-ééééé] [MB-7K3QZ9PA]".to_owned(),
        ] {
            assert_eq!(find_token(&reply).as_deref(), Some("7K3QZ9PA"), "{reply}");
        }
    }

    #[test]
    fn look_alikes_are_not_tokens() {
        for subject in [
            "Quote for March",
            "[MB-7K3QZ9P]",
            "[MB-7K3QZ9PAX]",
            "[MB-7K3QZ9IA]",
            "[MB-7K3QZ9PA",
            "MB-7K3QZ9PA",
            "[MB-",
        ] {
            assert_eq!(find_token(subject), None, "{subject}");
        }
    }
}
