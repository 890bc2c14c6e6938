//! The fuzz targets on stable Rust: every input of `fuzz/corpus/<target>/`, then random
//! mutations of them (bit flips, byte changes, truncations, insertions, splices).
//!
//! `FUZZ_ITERATIONS` (default 300 per target) and `FUZZ_SEED` (default fixed) set the
//! random part; CI raises the count in release. Coverage-guided fuzzing of the same
//! functions: `cargo +nightly fuzz run <target> fuzz/corpus/<target>` (see `fuzz/`).

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::{fs, path::Path};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

fn mutate(rng: &mut fastrand::Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let len = out.len();
        match rng.u8(0..6) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                out[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                out[i] = rng.u8(..);
            }
            2 => out.truncate(rng.usize(..=len)),
            3 => {
                let i = rng.usize(..=len);
                let n = rng.usize(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                out.splice(i..i, bytes);
            }
            4 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let from = rng.usize(..=other.len());
                let to = rng.usize(from..=other.len());
                let i = rng.usize(..=len);
                out.splice(i..i, other[from..to].iter().copied());
            }
            _ if len > 1 => {
                // Interesting numbers, as fuzzers use: lengths and counts at the edges.
                let i = rng.usize(..len - 1);
                let v = [0u8, 1, 0x7f, 0x80, 0xff][rng.usize(..5)];
                out[i] = v;
                out[i + 1] = v;
            }
            _ => {}
        }
    }
    out
}

fn run(target: &str, f: fn(&[u8])) {
    let corpus = corpus(target);
    for input in &corpus {
        f(input);
    }
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..iterations {
        let base = rng.usize(..corpus.len());
        let input = mutate(&mut rng, &corpus[base], &corpus);
        let result = std::panic::catch_unwind(|| f(&input));
        if let Err(e) = result {
            panic!(
                "{target} panicked on {:?} (FUZZ_SEED={seed}): {e:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}

#[test]
fn estimate() {
    run("estimate", targets::estimate);
}

#[test]
fn path() {
    run("path", targets::path);
}

#[test]
fn event_stream() {
    run("event_stream", targets::event_stream);
}

// FAILS ON THE CURRENT CODE (issue 18): the `known_*` inputs of fuzz/corpus/response/ each
// reproduce a panic, a hang or a key left in debt; see fuzz/src/lib.rs, `response`.
#[test]
fn response() {
    run("response", targets::response);
}
