//! A byte-level BPE tokenizer, trained on the training text (the paper used the Mistral-7B BPE
//! restricted to 5K tokens; a small self-trained one keeps the project offline and self-contained).
//!
//! Ids: 0 = [`UNK`], 1 = [`PAD`], then the distinct bytes of the training text in increasing order,
//! then one id per learned merge, in the order learned. Text is first split GPT-2 style into words
//! (a leading space attaches to the following word), so merges never cross a word boundary.
//!
//! File format (JSON): `{"format": "learnlaw-bpe", "version": 1, "vocab_size": V, "bytes": [...],
//! "merges": [[a, b], ...]}`; merge k creates id 2 + bytes.len() + k.
use super::{PAD, UNK};
use crate::error::{Error, Result};
use crate::files::write_atomic;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;

const FORMAT: &str = "learnlaw-bpe";
const VERSION: u32 = 1;
/// Number of ids before the byte ids (UNK and PAD).
const SPECIAL: usize = 2;
/// What [`Bpe::decode`] writes for UNK (and for ids outside the vocabulary).
const REPLACEMENT: &str = "\u{FFFD}";

type Pair = (u32, u32);

/// A trained byte-level BPE tokenizer. See the module docs for the id layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Bpe {
    /// The distinct bytes of the training text, increasing; byte `bytes[i]` has id 2 + i.
    bytes: Vec<u8>,
    /// The learned merges in order; merge k creates id 2 + bytes.len() + k.
    merges: Vec<Pair>,
    /// Byte → id (UNK for bytes never seen in training).
    byte_id: Vec<u32>,
    /// Merge pair → the id it creates (a lower id = an earlier merge = applied first).
    ranks: HashMap<Pair, u32>,
    /// Each id's bytes (empty for UNK and PAD).
    tokens: Vec<Vec<u8>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BpeFile {
    format: String,
    version: u32,
    vocab_size: usize,
    bytes: Vec<u8>,
    merges: Vec<[u32; 2]>,
}

impl Bpe {
    /// Learns merges on `texts` until `vocab_size` ids exist or no adjacent pair occurs twice
    /// (so the result may be smaller than asked; see [`Bpe::vocab_size`]). Each step merges the most
    /// frequent pair, ties going to the smallest (left id, right id), so training is deterministic.
    pub fn train(texts: &[String], vocab_size: usize) -> Result<Bpe> {
        // Count each distinct word once, with its frequency: the merge loop then works on a few
        // thousand words instead of the whole text.
        let mut freq: HashMap<&[u8], u64> = HashMap::new();
        for text in texts {
            for word in pre_split(text) {
                *freq.entry(word.as_bytes()).or_default() += 1;
            }
        }
        if freq.is_empty() {
            return Err(Error::bad_input("BPE training corpus", "is empty (no text to learn a vocabulary from)"));
        }
        let mut seen = [false; 256];
        for &b in freq.keys().flat_map(|w| w.iter()) {
            seen[b as usize] = true;
        }
        let bytes: Vec<u8> = (0..=255u8).filter(|&b| seen[b as usize]).collect();
        let min = SPECIAL + bytes.len();
        if vocab_size < min {
            let problem = format!("must be at least {min} (UNK, PAD and the {} distinct bytes of the training text)", bytes.len());
            return Err(Error::config("vocab_size", vocab_size, problem));
        }
        let mut bpe = Bpe::from_parts(bytes, Vec::new());

        // Sorted so that word indices (and thus the whole run) do not depend on HashMap order.
        let mut words: Vec<(Vec<u32>, u64)> =
            freq.into_iter().map(|(w, f)| (w.iter().map(|&b| bpe.byte_id[b as usize]).collect(), f)).collect();
        words.sort_unstable();

        // Pair counts (weighted by word frequency), the words each pair may occur in (possibly
        // stale: checked on use), and a max-heap of (count, pair) entries, stale ones skipped on pop.
        let mut counts: HashMap<Pair, u64> = HashMap::new();
        let mut places: HashMap<Pair, Vec<usize>> = HashMap::new();
        for (wi, (w, f)) in words.iter().enumerate() {
            for p in w.windows(2) {
                let pair = (p[0], p[1]);
                *counts.entry(pair).or_default() += f;
                places.entry(pair).or_default().push(wi);
            }
        }
        let mut heap: BinaryHeap<(u64, Reverse<Pair>)> = counts.iter().map(|(&p, &c)| (c, Reverse(p))).collect();

        while bpe.vocab_size() < vocab_size {
            let Some((count, Reverse(pair))) = heap.pop() else { break };
            if counts.get(&pair) != Some(&count) {
                continue; // stale entry: the pair's count changed since it was pushed
            }
            if count < 2 {
                break; // a merge used once would only memorise that word
            }
            let new = bpe.vocab_size() as u32;
            bpe.push_merge(pair);
            let mut touched = HashSet::new();
            let mut wis = places.remove(&pair).unwrap_or_default();
            wis.sort_unstable();
            wis.dedup();
            for wi in wis {
                let (w, f) = &mut words[wi];
                if !w.windows(2).any(|p| (p[0], p[1]) == pair) {
                    continue;
                }
                // Take the word's pairs out, merge, put them back: only pairs next to the merge change.
                for p in w.windows(2) {
                    let pair = (p[0], p[1]);
                    *counts.get_mut(&pair).expect("counted pair") -= *f;
                    touched.insert(pair);
                }
                merge_word(w, pair, new);
                for p in w.windows(2) {
                    let pair = (p[0], p[1]);
                    *counts.entry(pair).or_default() += *f;
                    touched.insert(pair);
                    if p.contains(&new) {
                        places.entry(pair).or_default().push(wi);
                    }
                }
            }
            counts.remove(&pair);
            for p in touched {
                match counts.get(&p) {
                    Some(&c) if c > 0 => heap.push((c, Reverse(p))),
                    Some(_) => {
                        counts.remove(&p);
                    }
                    None => {}
                }
            }
        }
        Ok(bpe)
    }

    /// Builds the lookup tables from the byte list and the merges (assumed consistent).
    fn from_parts(bytes: Vec<u8>, merges: Vec<Pair>) -> Bpe {
        let mut byte_id = vec![UNK; 256];
        let mut tokens = vec![Vec::new(); SPECIAL];
        for (i, &b) in bytes.iter().enumerate() {
            byte_id[b as usize] = (SPECIAL + i) as u32;
            tokens.push(vec![b]);
        }
        let mut bpe = Bpe { bytes, merges: Vec::new(), byte_id, ranks: HashMap::new(), tokens };
        for pair in merges {
            bpe.push_merge(pair);
        }
        bpe
    }

    fn push_merge(&mut self, pair: Pair) {
        let new = self.tokens.len() as u32;
        let token = [&self.tokens[pair.0 as usize][..], &self.tokens[pair.1 as usize][..]].concat();
        self.tokens.push(token);
        self.merges.push(pair);
        self.ranks.insert(pair, new);
    }

    /// Number of ids (UNK, PAD, bytes, merges).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The bytes of token `id` (empty for UNK and PAD), or `None` outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(|t| &t[..])
    }

    /// Token ids of `text`. Bytes never seen in training become UNK; the result never holds PAD.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut word = Vec::new();
        for piece in pre_split(text) {
            word.clear();
            word.extend(piece.bytes().map(|b| self.byte_id[b as usize]));
            // Apply the earliest-learned merge present, until none applies (standard BPE encoding).
            while let Some((pair, new)) =
                word.windows(2).filter_map(|p| self.ranks.get(&(p[0], p[1])).map(|&new| ((p[0], p[1]), new))).min_by_key(|&(_, new)| new)
            {
                merge_word(&mut word, pair, new);
            }
            ids.extend_from_slice(&word);
        }
        ids
    }

    /// The text of `ids`: UNK (and any id outside the vocabulary) becomes U+FFFD, PAD nothing.
    /// Byte sequences that are not valid UTF-8 (a multi-byte character cut by truncation) are
    /// replaced by U+FFFD too.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match id {
                PAD => {}
                UNK => bytes.extend_from_slice(REPLACEMENT.as_bytes()),
                _ => bytes.extend_from_slice(self.token_bytes(id).unwrap_or(REPLACEMENT.as_bytes())),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Writes the JSON file described in the module docs, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let file = BpeFile {
            format: FORMAT.into(),
            version: VERSION,
            vocab_size: self.vocab_size(),
            bytes: self.bytes.clone(),
            merges: self.merges.iter().map(|&(a, b)| [a, b]).collect(),
        };
        let json = serde_json::to_string(&file).map_err(|e| Error::format(path, format!("cannot serialize: {e}")))?;
        write_atomic(path, json.as_bytes())
    }

    /// Reads a file written by [`Bpe::save`], checking that it is consistent.
    pub fn load(path: &Path) -> Result<Bpe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file: BpeFile = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not a BPE tokenizer file: {e}")))?;
        if file.format != FORMAT || file.version != VERSION {
            let problem = format!("format {:?} version {}; expected {FORMAT:?} version {VERSION}", file.format, file.version);
            return Err(Error::format(path, problem));
        }
        if let Some(w) = file.bytes.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::format(path, format!("`bytes` must be strictly increasing, found {} then {}", w[0], w[1])));
        }
        for (k, &[a, b]) in file.merges.iter().enumerate() {
            let new = SPECIAL + file.bytes.len() + k;
            // A merge may only join ids that exist before it (and never UNK or PAD).
            if [a, b].iter().any(|&id| (id as usize) < SPECIAL || id as usize >= new) {
                return Err(Error::format(path, format!("merge {k} = [{a}, {b}] refers to an id outside {SPECIAL}..{new}")));
            }
        }
        let bpe = Bpe::from_parts(file.bytes, file.merges.iter().map(|&[a, b]| (a, b)).collect());
        if bpe.vocab_size() != file.vocab_size {
            let problem = format!("vocab_size {} disagrees with 2 + bytes + merges = {}", file.vocab_size, bpe.vocab_size());
            return Err(Error::format(path, problem));
        }
        Ok(bpe)
    }
}

/// Replaces each non-overlapping occurrence of `pair` in `word` (left to right) by `new`.
fn merge_word(word: &mut Vec<u32>, pair: Pair, new: u32) {
    let (mut out, mut i) = (0, 0);
    while i < word.len() {
        if i + 1 < word.len() && (word[i], word[i + 1]) == pair {
            word[out] = new;
            i += 2;
        } else {
            word[out] = word[i];
            i += 1;
        }
        out += 1;
    }
    word.truncate(out);
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Space,
    Letter,
    Digit,
    Other,
}

fn class(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else {
        Class::Other
    }
}

/// Splits `text` GPT-2 style into pieces whose concatenation is `text`: a run of letters, of digits
/// or of other symbols, with at most one leading space (" Lily", ","); whitespace not followed by
/// such a run stays a piece of its own, minus a final space that goes to the next word.
fn pre_split(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let run_end = |mut i: usize, cl: Class| {
        while i < chars.len() && class(chars[i].1) == cl {
            i += 1;
        }
        i
    };
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let next = chars.get(i + 1).map(|&(_, c)| class(c));
        let end = match class(c) {
            Class::Space if c == ' ' && next.is_some_and(|n| n != Class::Space) => run_end(i + 1, next.expect("checked")),
            Class::Space => {
                let end = run_end(i, Class::Space);
                // Leave a final ' ' to lead the next word, as GPT-2's `\s+(?!\S)` does.
                if end < chars.len() && end - i > 1 && chars[end - 1].1 == ' ' {
                    end - 1
                } else {
                    end
                }
            }
            cl => run_end(i, cl),
        };
        pieces.push(&text[at(i)..at(end)]);
        i = end;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        [
            "Once upon a time, there was a little girl named Lily.",
            "Lily loved to play with her ball in the park.",
            "One day, Lily saw a big dog in the park. They were happy.",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn pre_split_attaches_space_to_the_next_word() {
        assert_eq!(pre_split("Once upon a time, 42 cats!"), ["Once", " upon", " a", " time", ",", " 42", " cats", "!"]);
        assert_eq!(pre_split("a  b\n\nc "), ["a", " ", " b", "\n\n", "c", " "]);
        assert_eq!(pre_split("  héllo"), [" ", " héllo"]);
        assert!(pre_split("").is_empty());
    }

    #[test]
    fn merge_word_is_left_to_right_non_overlapping() {
        let mut w = vec![5, 5, 5, 6, 5, 5];
        merge_word(&mut w, (5, 5), 9);
        assert_eq!(w, [9, 5, 6, 9]);
    }

    #[test]
    fn ids_layout_and_training_merges() {
        let texts = corpus();
        let bpe = Bpe::train(&texts, 1000).unwrap();
        let n_bytes = bpe.bytes.len();
        assert_eq!(bpe.bytes, {
            let mut b: Vec<u8> = texts.concat().bytes().collect();
            b.sort_unstable();
            b.dedup();
            b
        });
        assert_eq!(bpe.token_bytes(2 + n_bytes as u32 - 1), Some(&[*bpe.bytes.last().unwrap()][..]));
        // Training stops once no pair occurs twice, well short of 1000.
        assert!(bpe.vocab_size() > 2 + n_bytes && bpe.vocab_size() < 1000, "{}", bpe.vocab_size());
        // Frequent words became single tokens (" Lily" occurs twice with its space, "Lily" twice without).
        assert_eq!(bpe.encode(" Lily").len(), 1);
        assert_eq!(bpe.encode(" park").len(), 1);
        // Exactly vocab_size when asked for fewer than the natural end.
        assert_eq!(Bpe::train(&texts, 2 + n_bytes + 3).unwrap().vocab_size(), 2 + n_bytes + 3);
        assert_eq!(Bpe::train(&texts, 2 + n_bytes).unwrap().vocab_size(), 2 + n_bytes);
    }

    #[test]
    fn training_is_deterministic() {
        let texts = super::super::stories::generate_stories(200, 3);
        assert_eq!(Bpe::train(&texts, 300).unwrap(), Bpe::train(&texts, 300).unwrap());
    }

    #[test]
    fn round_trip_on_training_and_unseen_text() {
        let texts = super::super::stories::generate_stories(300, 1);
        let bpe = Bpe::train(&texts, 400).unwrap();
        assert_eq!(bpe.vocab_size(), 400);
        for t in &texts[..50] {
            let ids = bpe.encode(t);
            assert!(ids.len() < t.len() / 2, "BPE should compress: {} ids for {} bytes", ids.len(), t.len());
            assert!(ids.iter().all(|&id| id != UNK && id != PAD && (id as usize) < bpe.vocab_size()));
            assert_eq!(bpe.decode(&ids), *t);
        }
        // Unseen words made of seen bytes.
        let unseen = "Zoe yelled: \"Lo, a pot!\"  Tiny toy.\n";
        let unseen: String = unseen.chars().filter(|c| bpe.byte_id[*c as usize] != UNK).collect();
        let ids = bpe.encode(&unseen);
        assert!(!ids.contains(&UNK));
        assert_eq!(bpe.decode(&ids), unseen);
    }

    #[test]
    fn unseen_bytes_are_unk_and_decode_marks_them() {
        let bpe = Bpe::train(&corpus(), 200).unwrap();
        let ids = bpe.encode("Lily ☃ Q");
        assert_eq!(ids.iter().filter(|&&id| id == UNK).count(), 3 + 1, "3 bytes of ☃ and Q: {ids:?}");
        assert_eq!(bpe.decode(&ids), "Lily \u{FFFD}\u{FFFD}\u{FFFD} \u{FFFD}");
        assert_eq!(bpe.decode(&[PAD, ids[0], PAD, 99_999]), "Lily\u{FFFD}");
    }

    #[test]
    fn vocab_too_small_says_the_minimum() {
        let texts = vec!["abcab".to_string()];
        let e = Bpe::train(&texts, 4).unwrap_err();
        assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("at least 5"), "{e}");
        assert_eq!(Bpe::train(&texts, 5).unwrap().vocab_size(), 5);
        assert_eq!(Bpe::train(&texts, 6).unwrap().encode("ab").len(), 1);
    }

    #[test]
    fn empty_corpus_is_an_error() {
        for texts in [vec![], vec![String::new(), String::new()]] {
            let e = Bpe::train(&texts, 100).unwrap_err();
            assert!(matches!(e, Error::BadInput { .. }) && e.to_string().contains("empty"), "{e}");
        }
    }

    #[test]
    fn save_load_round_trip_and_corrupt_files() {
        let bpe = Bpe::train(&super::super::stories::generate_stories(100, 2), 250).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bpe.json");
        bpe.save(&path).unwrap();
        let back = Bpe::load(&path).unwrap();
        assert_eq!(back, bpe);
        let s = "The dog ran to the park.";
        assert_eq!(back.encode(s), bpe.encode(s));

        let cases = [
            ("{not json", "not a BPE tokenizer file"),
            (r#"{"format":"other","version":1,"vocab_size":3,"bytes":[97],"merges":[]}"#, "format"),
            (r#"{"format":"learnlaw-bpe","version":1,"vocab_size":4,"bytes":[98,97],"merges":[]}"#, "strictly increasing"),
            (r#"{"format":"learnlaw-bpe","version":1,"vocab_size":5,"bytes":[97,98],"merges":[[2,4]]}"#, "merge 0"),
            (r#"{"format":"learnlaw-bpe","version":1,"vocab_size":9,"bytes":[97,98],"merges":[[2,3]]}"#, "vocab_size 9"),
        ];
        for (text, needle) in cases {
            std::fs::write(&path, text).unwrap();
            let e = Bpe::load(&path).unwrap_err();
            assert!(matches!(e, Error::Format { .. }) && e.to_string().contains(needle), "{needle}: {e}");
        }
        let e = Bpe::load(&dir.path().join("missing.json")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }
}
