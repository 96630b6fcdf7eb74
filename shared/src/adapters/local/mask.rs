//! Masking of secret values in task output before it reaches the log.
//!
//! Output arrives in chunks of any size, so a secret may be split across two reads.
//! [`LineMasker`] holds back the unfinished line until its newline arrives (or until the
//! line grows past a cap, when it lets out all but a tail long enough to hold a secret).

use crate::secret::Secret;

/// Values shorter than this are not masked: masking `a` or `42` would ruin the log and
/// protect nothing.
pub const MIN_MASKED_LEN: usize = 4;

/// What a masked value is replaced with.
pub const MASK: &[u8] = b"***";

/// A line longer than this is let out without waiting for its newline.
const MAX_PENDING_LINE: usize = 64 * 1024;

/// The secret values to mask, longest first (so a value containing another is masked whole).
#[derive(Clone, Default)]
pub struct Masker {
    values: Vec<Vec<u8>>,
}

impl Masker {
    /// A masker for these values; values shorter than [`MIN_MASKED_LEN`] are ignored.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut values: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| s.expose().as_bytes().to_vec())
            .filter(|v| v.len() >= MIN_MASKED_LEN)
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    /// `text` with every secret value replaced by `***`.
    pub fn mask(&self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        'outer: while i < text.len() {
            for value in &self.values {
                if text[i..].starts_with(value) {
                    out.extend_from_slice(MASK);
                    i += value.len();
                    continue 'outer;
                }
            }
            out.push(text[i]);
            i += 1;
        }
        out
    }

    /// Same as [`Masker::mask`], for text.
    pub fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask(text.as_bytes())).into_owned()
    }

    /// The length of the longest value.
    fn longest(&self) -> usize {
        self.values.first().map_or(0, Vec::len)
    }

    /// Where to cut `text` so that no secret occurrence spans the cut, at or before `at`.
    fn safe_cut(&self, text: &[u8], at: usize) -> usize {
        let mut cut = at;
        for value in &self.values {
            let first = at.saturating_sub(value.len() - 1);
            for start in first..at {
                if start < cut && text[start..].starts_with(value) && start + value.len() > at {
                    cut = start;
                }
            }
        }
        cut
    }
}

/// A streaming masker: feed it chunks, it gives back masked output, whole lines at a time.
pub struct LineMasker {
    masker: Masker,
    pending: Vec<u8>,
    cap: usize,
}

impl LineMasker {
    /// A streaming masker over `masker`'s values.
    pub fn new(masker: Masker) -> Self {
        Self::with_cap(masker, MAX_PENDING_LINE)
    }

    fn with_cap(masker: Masker, cap: usize) -> Self {
        let cap = cap.max(masker.longest() * 2);
        Self {
            masker,
            pending: Vec::new(),
            cap,
        }
    }

    /// Takes a chunk; returns the masked output that is ready (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        if let Some(last_newline) = self.pending.iter().rposition(|&b| b == b'\n') {
            let rest = self.pending.split_off(last_newline + 1);
            out = self.masker.mask(&self.pending);
            self.pending = rest;
        }
        if self.pending.len() > self.cap {
            // Keep a tail that may hold the beginning of a secret; let the rest out.
            let keep = self.masker.longest().saturating_sub(1);
            let at = self.pending.len() - keep;
            let cut = self.masker.safe_cut(&self.pending, at);
            let rest = self.pending.split_off(cut);
            out.extend(self.masker.mask(&self.pending));
            self.pending = rest;
        }
        out
    }

    /// The masked remainder, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let out = self.masker.mask(&self.pending);
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(values: &[&str]) -> Masker {
        let secrets: Vec<Secret> = values.iter().map(|v| Secret::new(*v)).collect();
        Masker::new(&secrets)
    }

    fn stream(masker: Masker, cap: usize, chunks: &[&[u8]]) -> String {
        let mut lines = LineMasker::with_cap(masker, cap);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(lines.push(chunk));
        }
        out.extend(lines.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_every_value_and_ignores_short_ones() {
        let m = masker(&["s3cr3t-value", "abc", "s3cr3t"]);
        assert_eq!(m.mask_str("x s3cr3t-value y s3cr3t abc"), "x *** y *** abc");
    }

    #[test]
    fn masks_a_value_split_across_chunks() {
        let m = masker(&["canary-token-1234"]);
        let out = stream(
            m,
            MAX_PENDING_LINE,
            &[
                b"token: cana",
                b"ry-tok",
                b"en-1234 end\nnext ",
                b"canary-token-1234",
            ],
        );
        assert_eq!(out, "token: *** end\nnext ***");
    }

    #[test]
    fn masks_across_the_cut_of_a_very_long_line() {
        let m = masker(&["canary-token-1234"]);
        // A cap of 40 bytes forces cuts in a line that never ends.
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let line = format!("{}canary-token-1234{}", "x".repeat(30), "y".repeat(50));
        for piece in line.as_bytes().chunks(7) {
            chunks.push(piece.to_vec());
        }
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let out = stream(m, 40, &refs);
        assert_eq!(out, format!("{}***{}", "x".repeat(30), "y".repeat(50)));
    }

    #[test]
    fn a_long_line_is_let_out_before_its_newline() {
        let m = masker(&["canary-token-1234"]);
        let mut lines = LineMasker::with_cap(m, 40);
        let out = lines.push(&[b'z'; 100]);
        assert!(out.len() >= 60, "held back {} bytes", 100 - out.len());
    }
}
