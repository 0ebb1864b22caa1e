//! From text to training rows: reading a user corpus, cutting stories into fixed-width rows, and
//! the training noise of the paper's §5 (replace a token, delete the last token, repeat a token).
use super::bpe::Bpe;
use super::PAD;
use crate::error::{Error, Result};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Reads a corpus of stories: JSONL (extension `.jsonl` or `.json`) with a string field `text` on
/// each line, or else plain text with one story per line. Blank lines and blank stories are skipped.
pub fn read_corpus(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::format(path, format!("not UTF-8 text: {e}")))?;
    let jsonl = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
    let mut stories = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let story = if jsonl {
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| Error::format(path, format!("line {}: not valid JSON: {e}", i + 1)))?;
            match value.get("text").and_then(|t| t.as_str()) {
                Some(t) => t.to_string(),
                None => return Err(Error::format(path, format!("line {}: expected a JSON object with a string field `text`", i + 1))),
            }
        } else {
            line.to_string()
        };
        if !story.trim().is_empty() {
            stories.push(story);
        }
    }
    if stories.is_empty() {
        let layout = if jsonl { "one JSON object with a `text` field per line" } else { "one story per line" };
        return Err(Error::format(path, format!("the corpus holds no stories (expected {layout})")));
    }
    Ok(stories)
}

/// Encodes up to `max_rows` stories as rows of `seq_len` ids, one story per row: longer stories
/// are truncated, shorter ones padded with PAD. Like the official [n, 65] tensors, each row is one
/// example with its own weight in the policy, and PAD positions are masked from the loss. Stories
/// of fewer than 2 tokens are skipped (they have no label to predict). Returns the rows flattened
/// (row-major); fewer than `max_rows` when the stories run out.
pub fn rows_from_texts(bpe: &Bpe, texts: &[String], seq_len: usize, max_rows: usize) -> Vec<u32> {
    let mut rows = Vec::with_capacity(max_rows.min(texts.len()) * seq_len);
    let mut n = 0;
    for text in texts {
        if n == max_rows {
            break;
        }
        let ids = bpe.encode(text);
        if ids.len() < 2 {
            continue;
        }
        let len = ids.len().min(seq_len);
        rows.extend_from_slice(&ids[..len]);
        rows.resize(rows.len() + seq_len - len, PAD);
        n += 1;
    }
    rows
}

/// Number of tokens before the first PAD (rows are a story followed by padding).
fn used(row: &[u32]) -> usize {
    row.iter().position(|&t| t == PAD).unwrap_or(row.len())
}

/// Sets position `i` to `id` (the replace operation).
fn replace_token(row: &mut [u32], i: usize, id: u32) {
    row[i] = id;
}

/// Turns the last token into PAD, unless only 2 tokens are left (a row needs one label).
fn delete_last(row: &mut [u32]) {
    let len = used(row);
    if len > 2 {
        row[len - 1] = PAD;
    }
}

/// Duplicates the token at `i`, shifting the rest right within the row (the last id falls off).
fn repeat_token(row: &mut [u32], i: usize) {
    if i + 1 < row.len() {
        row.copy_within(i..row.len() - 1, i + 1);
    }
}

/// Applies `ops` operations to one row, each chosen uniformly among: replace a random token with a
/// random id in 2..vocab_size (never UNK or PAD, so no hole appears mid-row); delete the last token;
/// repeat a random token. The row keeps at least 2 tokens, so it always has a non-PAD label.
pub fn perturb<R: Rng + ?Sized>(row: &mut [u32], ops: usize, vocab_size: usize, rng: &mut R) {
    for _ in 0..ops {
        let len = used(row);
        if len == 0 {
            return;
        }
        match rng.random_range(0..3) {
            0 => {
                let i = rng.random_range(0..len);
                if vocab_size > 2 {
                    replace_token(row, i, rng.random_range(2..vocab_size as u32));
                }
            }
            1 => delete_last(row),
            _ => {
                let i = rng.random_range(0..len);
                repeat_token(row, i);
            }
        }
    }
}

/// Perturbs ⌊fraction·n⌋ of the n rows of `rows` ([n, seq_len] row-major), chosen uniformly at
/// random, with `ops` operations each (see [`perturb`]). Deterministic for `seed`. Returns which
/// rows were perturbed.
pub fn add_noise(rows: &mut [u32], seq_len: usize, fraction: f64, ops: usize, vocab_size: usize, seed: u64) -> Vec<bool> {
    if seq_len == 0 {
        return Vec::new();
    }
    let n = rows.len() / seq_len;
    let k = ((fraction.clamp(0.0, 1.0) * n as f64).floor() as usize).min(n);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut noisy = vec![false; n];
    for i in rand::seq::index::sample(&mut rng, n, k) {
        noisy[i] = true;
    }
    // Perturb in row order, so each row's operations do not depend on the sampling order.
    for (row, _) in rows.chunks_exact_mut(seq_len).zip(&noisy).filter(|(_, &on)| on) {
        perturb(row, ops, vocab_size, &mut rng);
    }
    noisy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::UNK;

    const P: u32 = PAD;

    #[test]
    fn replace_delete_repeat_by_hand() {
        let mut row = vec![5, 6, 7, 8, P, P];
        replace_token(&mut row, 2, 9);
        assert_eq!(row, [5, 6, 9, 8, P, P]);
        delete_last(&mut row);
        assert_eq!(row, [5, 6, 9, P, P, P]);
        repeat_token(&mut row, 1);
        assert_eq!(row, [5, 6, 6, 9, P, P]);
        repeat_token(&mut row, 0);
        assert_eq!(row, [5, 5, 6, 6, 9, P]);
        // On a full row the last token falls off; repeating the last position changes nothing.
        repeat_token(&mut row, 3);
        assert_eq!(row, [5, 5, 6, 6, 6, 9]);
        repeat_token(&mut row, 2);
        assert_eq!(row, [5, 5, 6, 6, 6, 6]);
        let mut full = vec![3, 4, 5];
        repeat_token(&mut full, 2);
        assert_eq!(full, [3, 4, 5]);
        delete_last(&mut full);
        assert_eq!(full, [3, 4, P]);
        // Never below 2 tokens.
        delete_last(&mut full);
        assert_eq!(full, [3, 4, P]);
    }

    #[test]
    fn perturb_keeps_rows_well_formed() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for trial in 0..500 {
            let len = 2 + trial % 9;
            let mut row: Vec<u32> = (0..12).map(|i| if i < len { 2 + (i % 8) as u32 } else { P }).collect();
            perturb(&mut row, 20, 10, &mut rng);
            let used = used(&row);
            assert!(used >= 2, "{row:?}");
            // No PAD in the middle, no UNK introduced, every id in range.
            assert!(row[used..].iter().all(|&t| t == P), "{row:?}");
            assert!(row[..used].iter().all(|&t| t != UNK && (2..10).contains(&t)), "{row:?}");
        }
        let mut a = vec![2, 3, 4, 5, 6, 7, P, P];
        let mut b = a.clone();
        perturb(&mut a, 20, 50, &mut ChaCha8Rng::seed_from_u64(9));
        perturb(&mut b, 20, 50, &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(a, b);
        assert_ne!(a, [2, 3, 4, 5, 6, 7, P, P]);
        let mut untouched = vec![2, 3, P];
        perturb(&mut untouched, 0, 50, &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(untouched, [2, 3, P]);
    }

    #[test]
    fn add_noise_perturbs_exactly_floor_f_n_rows() {
        let (n, seq) = (37, 8);
        let clean: Vec<u32> = (0..n * seq).map(|i| 2 + (i % seq) as u32).collect();
        for (fraction, want) in [(0.0, 0), (0.5, 18), (0.3, 11), (1.0, 37)] {
            let mut rows = clean.clone();
            let noisy = add_noise(&mut rows, seq, fraction, 20, 100, 4);
            assert_eq!(noisy.len(), n);
            assert_eq!(noisy.iter().filter(|&&b| b).count(), want, "fraction {fraction}");
            for (i, (row, clean_row)) in rows.chunks(seq).zip(clean.chunks(seq)).enumerate() {
                if !noisy[i] {
                    assert_eq!(row, clean_row, "clean row {i} changed");
                }
            }
            let mut again = clean.clone();
            assert_eq!(add_noise(&mut again, seq, fraction, 20, 100, 4), noisy);
            assert_eq!(again, rows);
        }
    }

    #[test]
    fn rows_truncate_pad_and_skip_short_stories() {
        let texts: Vec<String> = ["aab aab aab", "a", "", "ab", "b a b a"].iter().map(|s| s.to_string()).collect();
        let bpe = Bpe::train(&texts, 5).unwrap(); // bytes only: ' ', 'a', 'b' = ids 2, 3, 4
        let rows = rows_from_texts(&bpe, &texts, 4, 10);
        assert_eq!(rows, [3, 3, 4, 2, 3, 4, P, P, 4, 2, 3, 2]);
        assert_eq!(rows_from_texts(&bpe, &texts, 4, 2).len(), 8);
        assert!(rows_from_texts(&bpe, &texts, 4, 0).is_empty());
    }

    #[test]
    fn read_corpus_text_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("c.txt");
        std::fs::write(&txt, "First story.\n\n  \nSecond story.\r\n").unwrap();
        assert_eq!(read_corpus(&txt).unwrap(), ["First story.", "Second story."]);

        let jsonl = dir.path().join("c.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"One.\\nTwo.\", \"id\": 3}\n\n{\"text\": \"Three.\"}\n").unwrap();
        assert_eq!(read_corpus(&jsonl).unwrap(), ["One.\nTwo.", "Three."]);

        std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{\"story\": \"no text\"}\n").unwrap();
        let e = read_corpus(&jsonl).unwrap_err();
        assert!(matches!(e, Error::Format { .. }) && e.to_string().contains("line 2") && e.to_string().contains("`text`"), "{e}");
        std::fs::write(&jsonl, "{\"text\": \"ok\"}\n\n{oops\n").unwrap();
        let e = read_corpus(&jsonl).unwrap_err();
        assert!(matches!(e, Error::Format { .. }) && e.to_string().contains("line 3: not valid JSON"), "{e}");

        std::fs::write(&txt, "\n  \n").unwrap();
        let e = read_corpus(&txt).unwrap_err();
        assert!(matches!(e, Error::Format { .. }) && e.to_string().contains("no stories"), "{e}");
        let e = read_corpus(&dir.path().join("none.txt")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }
}
