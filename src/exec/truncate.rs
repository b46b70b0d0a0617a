//! stdout / stderr capping (spec §2.5) and a bounded stream accumulator.
//!
//! The reference captures each stream in full, decodes it with
//! `errors="replace"` and then caps it. [`cap_output`] is that rule on a complete
//! buffer. [`CappedBuffer`] reaches the same result for a stream of any length while
//! holding only a bounded amount of memory.
//!
//! **Deviation from the reference:** error classification (§2.6) runs on the
//! *uncapped* stderr in the reference. Holding an unbounded stderr is a memory
//! exhaustion vector, so [`CappedBuffer`] instead keeps a bounded *classification
//! window* – the leading bytes (at least [`CLASSIFY_HEAD_BYTES`]) and the last
//! [`CLASSIFY_TAIL_BYTES`] – and classification searches that window. For streams
//! up to `head + tail` bytes this is exactly the whole stream; for longer streams the
//! middle is not searched.

/// Leading bytes of a stream kept for classification (256 KiB).
pub const CLASSIFY_HEAD_BYTES: usize = 256 * 1024;

/// Trailing bytes of a stream kept for classification (64 KiB).
pub const CLASSIFY_TAIL_BYTES: usize = 64 * 1024;

/// Joins head and tail of the classification window when bytes between them were
/// dropped. Starts with a newline and contains no ASCII letter, so no classification
/// substring can span the gap.
pub const CLASSIFY_GAP_MARKER: &str = "\n\u{2026}\n";

/// The notice appended to a capped stream.
pub fn truncation_notice(limit: usize) -> String {
    format!("\n\n[TRUNCATED: output exceeded {limit} bytes]")
}

/// Caps one captured stream (spec §2.5).
///
/// `bytes` may be invalid UTF-8; it is decoded lossily first (each maximal invalid
/// subsequence becomes U+FFFD, like Python's `errors="replace"`). If the UTF-8 encoding
/// of the decoded text exceeds `limit` bytes, the longest prefix of at most
/// `limit - notice.len()` bytes ending on a character boundary is kept and the notice
/// `"\n\n[TRUNCATED: output exceeded {limit} bytes]"` appended, so the result is at
/// most `limit` bytes (unless `limit` is smaller than the notice itself, in which case
/// the result is the notice alone). Returns the text and whether it was truncated.
pub fn cap_output(bytes: &[u8], limit: usize) -> (String, bool) {
    cap_text(String::from_utf8_lossy(bytes).into_owned(), limit)
}

/// [`cap_output`] on already-decoded text.
pub fn cap_text(mut text: String, limit: usize) -> (String, bool) {
    if text.len() <= limit {
        return (text, false);
    }
    let notice = truncation_notice(limit);
    text.truncate(floor_char_boundary(
        &text,
        limit.saturating_sub(notice.len()),
    ));
    text.push_str(&notice);
    (text, true)
}

/// Largest index `<= max` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Result of [`CappedBuffer::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedOutput {
    /// The capped text (what goes into `stdout` / `stderr`).
    pub text: String,
    /// Whether the text was capped.
    pub truncated: bool,
    /// Lossily decoded classification window (see the module docs).
    pub classify_text: String,
}

/// Bounded accumulator for one output stream.
///
/// Keeps the first `max(keep_limit, CLASSIFY_HEAD_BYTES)` bytes and the last
/// [`CLASSIFY_TAIL_BYTES`] bytes after them; memory use never exceeds roughly that sum,
/// however much is pushed.
#[derive(Debug, Clone)]
pub struct CappedBuffer {
    head_limit: usize,
    head: Vec<u8>,
    /// Ring buffer of the bytes after the head; allocated on first overflow.
    tail: Vec<u8>,
    /// Next write position in `tail` once it is full.
    tail_pos: usize,
    total: u64,
}

impl CappedBuffer {
    /// A buffer that keeps at least the first `keep_limit` bytes of the stream.
    /// Use the stream's cap (e.g. `max_stderr_bytes`) as `keep_limit`; the leading
    /// buffer is never smaller than [`CLASSIFY_HEAD_BYTES`].
    pub fn new(keep_limit: usize) -> Self {
        CappedBuffer {
            head_limit: keep_limit.max(CLASSIFY_HEAD_BYTES),
            head: Vec::new(),
            tail: Vec::new(),
            tail_pos: 0,
            total: 0,
        }
    }

    /// Appends a chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.total = self.total.saturating_add(chunk.len() as u64);
        let room = self.head_limit - self.head.len();
        let take = room.min(chunk.len());
        if take > 0 {
            let want = self.head.len() + take;
            if want > self.head.capacity() {
                // Amortised growth, but never beyond head_limit.
                let new_cap = want.max((self.head.capacity() * 2).min(self.head_limit));
                self.head.reserve_exact(new_cap - self.head.len());
            }
            self.head.extend_from_slice(&chunk[..take]);
        }
        let rest = &chunk[take..];
        if !rest.is_empty() {
            self.push_tail(rest);
        }
    }

    fn push_tail(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(CLASSIFY_TAIL_BYTES)..];
        if self.tail.len() < CLASSIFY_TAIL_BYTES {
            if self.tail.capacity() == 0 {
                self.tail.reserve_exact(CLASSIFY_TAIL_BYTES);
            }
            let fill = (CLASSIFY_TAIL_BYTES - self.tail.len()).min(bytes.len());
            self.tail.extend_from_slice(&bytes[..fill]);
            self.write_ring(&bytes[fill..]);
        } else {
            self.write_ring(bytes);
        }
    }

    /// Overwrites the oldest ring bytes; `tail` is full whenever `bytes` is non-empty.
    fn write_ring(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = (CLASSIFY_TAIL_BYTES - self.tail_pos).min(bytes.len());
            self.tail[self.tail_pos..self.tail_pos + n].copy_from_slice(&bytes[..n]);
            self.tail_pos = (self.tail_pos + n) % CLASSIFY_TAIL_BYTES;
            bytes = &bytes[n..];
        }
    }

    /// Total number of bytes pushed so far.
    pub fn total_len(&self) -> u64 {
        self.total
    }

    /// Bytes of heap currently reserved by the buffer (for monitoring and tests).
    pub fn heap_bytes(&self) -> usize {
        self.head.capacity() + self.tail.capacity()
    }

    /// The tail bytes in stream order.
    fn tail_in_order(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tail.len());
        if self.tail.len() == CLASSIFY_TAIL_BYTES {
            out.extend_from_slice(&self.tail[self.tail_pos..]);
            out.extend_from_slice(&self.tail[..self.tail_pos]);
        } else {
            out.extend_from_slice(&self.tail);
        }
        out
    }

    /// Produces the capped text (rule of [`cap_output`] with limit `cap`) and the
    /// classification window.
    ///
    /// The text is exactly `cap_output(whole_stream, cap)` as long as
    /// `cap <= max(keep_limit, CLASSIFY_HEAD_BYTES)` or no byte was dropped. Otherwise
    /// it is built from the kept leading bytes and reported as truncated.
    pub fn finish(self, cap: usize) -> CappedOutput {
        let head_len = self.head.len() as u64;
        let tail_len = self.tail.len() as u64;
        let complete = self.total == head_len + tail_len;

        let classify_text = if self.tail.is_empty() {
            String::from_utf8_lossy(&self.head).into_owned()
        } else {
            let mut s = String::from_utf8_lossy(&self.head).into_owned();
            let tail = self.tail_in_order();
            if self.total > head_len + tail_len {
                s.push_str(CLASSIFY_GAP_MARKER);
            }
            s.push_str(&String::from_utf8_lossy(&tail));
            s
        };

        let (text, truncated) = if complete {
            // The whole stream is held (head, plus tail without a gap): exact.
            let tail = self.tail_in_order();
            let mut all = self.head;
            all.extend_from_slice(&tail);
            cap_output(&all, cap)
        } else {
            // Bytes were dropped, so the stream (and its lossy decoding, which never
            // shrinks) is longer than the head, hence longer than `cap` whenever
            // `cap <= head_limit`. Drop an incomplete trailing UTF-8 sequence so the
            // decoded head is an exact prefix of the decoded stream.
            let decoded = String::from_utf8_lossy(strip_incomplete_tail(&self.head)).into_owned();
            let (mut text, truncated) = cap_text(decoded, cap);
            if !truncated {
                // cap > head_limit: content was still lost; say so.
                let notice = truncation_notice(cap);
                text.truncate(floor_char_boundary(&text, cap.saturating_sub(notice.len())));
                text.push_str(&notice);
            }
            (text, true)
        };

        CappedOutput {
            text,
            truncated,
            classify_text,
        }
    }
}

/// Removes a trailing *incomplete but so far valid* UTF-8 sequence (a character cut
/// by the buffer boundary). Invalid bytes are left for lossy decoding.
fn strip_incomplete_tail(bytes: &[u8]) -> &[u8] {
    let start = bytes.len().saturating_sub(3);
    for i in (start..bytes.len()).rev() {
        let b = bytes[i];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte, keep looking for the lead byte
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return bytes,
        };
        let have = bytes.len() - i;
        if have < need && std::str::from_utf8(&bytes[i..]).is_err_and(|e| e.error_len().is_none()) {
            return &bytes[..i];
        }
        return bytes;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice_len(limit: usize) -> usize {
        truncation_notice(limit).len()
    }

    #[test]
    fn short_output_untouched() {
        assert_eq!(cap_output(b"hello", 100), ("hello".to_string(), false));
        assert_eq!(cap_output(b"", 100), (String::new(), false));
        let s = "x".repeat(100);
        assert_eq!(cap_output(s.as_bytes(), 100), (s.clone(), false));
    }

    #[test]
    fn exact_notice_and_bound() {
        let s = "a".repeat(200);
        let (t, tr) = cap_output(s.as_bytes(), 100);
        assert!(tr);
        let n = notice_len(100);
        assert_eq!(t.len(), 100);
        assert_eq!(
            t,
            format!(
                "{}\n\n[TRUNCATED: output exceeded 100 bytes]",
                "a".repeat(100 - n)
            )
        );
    }

    #[test]
    fn default_limit_vector() {
        let s = "y".repeat(70_000);
        let (t, tr) = cap_output(s.as_bytes(), 65_536);
        assert!(tr);
        assert_eq!(t.len(), 65_536);
        assert!(t.ends_with("\n\n[TRUNCATED: output exceeded 65536 bytes]"));
        assert_eq!(t.len() - notice_len(65_536), 65_536 - 42);
    }

    #[test]
    fn cut_on_char_boundary() {
        // 'é' is 2 bytes; make the cut fall inside one.
        let limit = 100;
        let keep = limit - notice_len(limit); // 58
        let s = format!("a{}", "é".repeat(100));
        let (t, tr) = cap_output(s.as_bytes(), limit);
        assert!(tr);
        let body = t.strip_suffix(&truncation_notice(limit)).unwrap();
        assert!(body.len() <= keep);
        assert_eq!(body.len(), keep - 1);
        assert!(t.len() <= limit);
    }

    #[test]
    fn invalid_utf8_replaced_like_python() {
        // Vectors checked against Python's bytes.decode("utf-8", "replace").
        assert_eq!(cap_output(b"a\xffb", 100).0, "a\u{FFFD}b");
        assert_eq!(cap_output(b"\xe2\x82", 100).0, "\u{FFFD}");
        assert_eq!(cap_output(b"\xe2\x82x", 100).0, "\u{FFFD}x");
        assert_eq!(cap_output(b"\xed\xa0\x80", 100).0, "\u{FFFD}".repeat(3));
        assert_eq!(cap_output(b"\xc0\xaf", 100).0, "\u{FFFD}".repeat(2));
        assert_eq!(cap_output(b"\xf4\x90\x80\x80", 100).0, "\u{FFFD}".repeat(4));
    }

    #[test]
    fn replacement_growth_counts_toward_limit() {
        // 60 invalid bytes become 180 bytes of U+FFFD: over a 100-byte limit.
        let bytes = vec![0xffu8; 60];
        let (t, tr) = cap_output(&bytes, 100);
        assert!(tr);
        assert!(t.len() <= 100);
    }

    #[test]
    fn tiny_limit_yields_notice_only() {
        let (t, tr) = cap_output(b"0123456789", 5);
        assert!(tr);
        assert_eq!(t, truncation_notice(5));
    }

    #[test]
    fn buffer_small_stream_matches_cap_output() {
        let mut b = CappedBuffer::new(100);
        b.push(b"hello ");
        b.push(b"world");
        assert_eq!(b.total_len(), 11);
        let out = b.finish(100);
        assert_eq!(out.text, "hello world");
        assert!(!out.truncated);
        assert_eq!(out.classify_text, "hello world");
    }

    #[test]
    fn buffer_truncation_matches_cap_output() {
        let data: Vec<u8> = "aé😀b".repeat(10_000).into_bytes();
        for chunk in [1usize, 7, 1000, 65536] {
            let mut b = CappedBuffer::new(1000);
            for c in data.chunks(chunk) {
                b.push(c);
            }
            let out = b.finish(1000);
            assert_eq!(
                (out.text, out.truncated),
                cap_output(&data, 1000),
                "{chunk}"
            );
            assert_eq!(out.classify_text, String::from_utf8_lossy(&data));
        }
    }

    #[test]
    fn buffer_cut_inside_char_is_exact() {
        // Streams long enough to drop bytes; the head ends inside a 4-byte char at
        // every possible offset, and the cap is as large as the head allows.
        for pad in 0..4 {
            let data = format!("{}{}", "x".repeat(pad), "😀".repeat(100_000)).into_bytes();
            for cap in [CLASSIFY_HEAD_BYTES, CLASSIFY_HEAD_BYTES - 1, 65_536, 100] {
                let mut b = CappedBuffer::new(0);
                for c in data.chunks(4093) {
                    b.push(c);
                }
                let out = b.finish(cap);
                assert_eq!(
                    (out.text, out.truncated),
                    cap_output(&data, cap),
                    "pad {pad} cap {cap}"
                );
            }
        }
    }

    #[test]
    fn buffer_stream_longer_than_head() {
        // Just over the head: no gap, so the classify text is the whole stream.
        let mut data = vec![b'a'; CLASSIFY_HEAD_BYTES];
        data.extend_from_slice(b"\nMemoryError\n");
        let mut b = CappedBuffer::new(65_536);
        for c in data.chunks(4096) {
            b.push(c);
        }
        let out = b.finish(65_536);
        assert!(out.truncated);
        assert_eq!(out.text, cap_output(&data, 65_536).0);
        assert_eq!(out.classify_text.as_bytes(), &data[..]);
    }

    #[test]
    fn buffer_with_gap_keeps_head_and_tail() {
        let mut b = CappedBuffer::new(65_536);
        b.push(b"START ");
        let filler = vec![b'z'; 1 << 20];
        b.push(&filler);
        b.push(b"Traceback\nZeroDivisionError: division by zero\n");
        let out = b.finish(65_536);
        assert!(out.truncated);
        assert!(out.text.starts_with("START zzz"));
        assert_eq!(out.text.len(), 65_536);
        assert!(out.classify_text.starts_with("START "));
        assert!(out.classify_text.contains(CLASSIFY_GAP_MARKER));
        assert!(out
            .classify_text
            .ends_with("Traceback\nZeroDivisionError: division by zero\n"));
        assert_eq!(
            out.classify_text.len(),
            CLASSIFY_HEAD_BYTES + CLASSIFY_GAP_MARKER.len() + CLASSIFY_TAIL_BYTES
        );
    }

    #[test]
    fn buffer_small_keep_limit_still_exact_within_head() {
        let data = vec![b'q'; 300_000];
        let mut b = CappedBuffer::new(10);
        b.push(&data);
        let out = b.finish(200);
        assert_eq!((out.text, out.truncated), cap_output(&data, 200));
    }

    #[test]
    fn buffer_cap_larger_than_head_is_flagged() {
        let mut b = CappedBuffer::new(10);
        b.push(&vec![b'q'; 1 << 20]);
        let cap = CLASSIFY_HEAD_BYTES + 1000;
        let out = b.finish(cap);
        assert!(out.truncated);
        assert!(out.text.len() <= cap);
        assert!(out.text.ends_with(&truncation_notice(cap)));
    }

    #[test]
    fn buffer_memory_stays_bounded() {
        let mut b = CappedBuffer::new(65_536);
        let chunk = vec![b'x'; 64 * 1024];
        let mut max_heap = 0;
        for _ in 0..1600 {
            // 1600 * 64 KiB = 100 MiB
            b.push(&chunk);
            max_heap = max_heap.max(b.heap_bytes());
        }
        assert_eq!(b.total_len(), 1600 * 64 * 1024);
        assert!(
            max_heap <= CLASSIFY_HEAD_BYTES + CLASSIFY_TAIL_BYTES,
            "heap grew to {max_heap}"
        );
        let out = b.finish(65_536);
        assert!(out.truncated);
        assert_eq!(out.text.len(), 65_536);
        assert!(out.classify_text.len() < 400 * 1024);
    }

    #[test]
    fn strip_incomplete_tail_cases() {
        assert_eq!(strip_incomplete_tail(b"ab"), b"ab");
        assert_eq!(strip_incomplete_tail(b"a\xf0\x9f\x98"), b"a");
        assert_eq!(strip_incomplete_tail(b"a\xf0\x9f"), b"a");
        assert_eq!(strip_incomplete_tail(b"a\xc3"), b"a");
        assert_eq!(strip_incomplete_tail(b"a\xc3\xa9"), b"a\xc3\xa9");
        // invalid, not incomplete: kept for lossy decoding
        assert_eq!(strip_incomplete_tail(b"a\xff"), b"a\xff");
        assert_eq!(strip_incomplete_tail(b"a\xed\xa0"), b"a\xed\xa0");
    }
}
