//! Accuracy of the text heuristic against the real cl100k tokenizer (tiktoken-rs).
//!
//! Reference counts are computed at test time. Run with `--nocapture` to see the table.

use std::path::{Path, PathBuf};

use bedrock_throttle::estimate::text::count_tokens;

const CATEGORIES: &[&str] = &["prose", "code", "json", "chinese", "japanese", "emoji"];
const MAX_MEDIAN: f64 = 0.10;
const MAX_WORST: f64 = 0.25;

fn samples(category: &str) -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(category);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn heuristic_matches_cl100k_per_category() {
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let mut failures = Vec::new();
    println!(
        "{:<10} {:>3} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "category", "n", "chars", "cl100k", "estimate", "median", "worst"
    );
    for category in CATEGORIES {
        let mut errors = Vec::new();
        let (mut chars, mut reference, mut estimate) = (0usize, 0usize, 0u64);
        for (path, text) in samples(category) {
            let truth = bpe.encode_ordinary(&text).len();
            let guess = count_tokens(&text);
            let err = (guess as f64 - truth as f64) / truth as f64;
            if std::env::var_os("ACCURACY_VERBOSE").is_some() {
                println!(
                    "  {:<40} truth {truth:>5} guess {guess:>5} err {:+.1}%",
                    path.display(),
                    err * 100.0
                );
            }
            chars += text.chars().count();
            reference += truth;
            estimate += guess;
            errors.push(err.abs());
        }
        assert!(errors.len() >= 4, "{category}: too few samples");
        errors.sort_by(f64::total_cmp);
        let median = if errors.len() % 2 == 1 {
            errors[errors.len() / 2]
        } else {
            (errors[errors.len() / 2 - 1] + errors[errors.len() / 2]) / 2.0
        };
        let worst = *errors.last().unwrap();
        println!(
            "{:<10} {:>3} {:>7} {:>7} {:>8} {:>7.1}% {:>7.1}%",
            category,
            errors.len(),
            chars,
            reference,
            estimate,
            median * 100.0,
            worst * 100.0
        );
        if median > MAX_MEDIAN || worst > MAX_WORST {
            failures.push(format!(
                "{category}: median {:.1}% worst {:.1}%",
                median * 100.0,
                worst * 100.0
            ));
        }
    }
    assert!(failures.is_empty(), "out of bounds: {failures:?}");
}

fn cl100k(text: &str) -> u64 {
    tiktoken_rs::cl100k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// Whole request bodies: the heuristic estimator against the same shapes counted with cl100k.
#[test]
fn whole_bodies_close_to_cl100k() {
    use bedrock_throttle::estimate::{
        EstimateMethod, HeuristicEstimator, Operation, RequestInfo, TokenEstimator,
    };
    let texts: Vec<String> = CATEGORIES
        .iter()
        .flat_map(|c| samples(c).into_iter().map(|(_, t)| t))
        .collect();
    let anthropic = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 512,
        "system": texts[0],
        "messages": texts.iter().enumerate().map(|(i, t)| serde_json::json!({
            "role": if i % 2 == 0 { "user" } else { "assistant" },
            "content": [{"type": "text", "text": t}],
        })).collect::<Vec<_>>(),
    });
    let converse = serde_json::json!({
        "system": [{"text": texts[1]}],
        "messages": texts.iter().map(|t| serde_json::json!({
            "role": "user", "content": [{"text": t}],
        })).collect::<Vec<_>>(),
    });
    let cases = [
        (
            "anthropic",
            "anthropic.claude-3-haiku-20240307-v1:0",
            Operation::Invoke,
            anthropic,
        ),
        (
            "converse",
            "us.amazon.nova-pro-v1:0",
            Operation::Converse,
            converse,
        ),
    ];
    let estimator = HeuristicEstimator::new();
    for (name, model, operation, body) in cases {
        let body = serde_json::to_vec(&body).unwrap();
        let info = RequestInfo {
            model: Some(model),
            operation,
            body: &body,
        };
        let heuristic = estimator.estimate(&info);
        let reference = estimator.estimate_with(&info, &cl100k, EstimateMethod::Tokenizer);
        let err = (heuristic.input_tokens as f64 - reference.input_tokens as f64)
            / reference.input_tokens as f64;
        println!(
            "{name:<10} body {:>6} B  cl100k {:>6}  heuristic {:>6}  {:+.1}%",
            body.len(),
            reference.input_tokens,
            heuristic.input_tokens,
            err * 100.0
        );
        assert_eq!(heuristic.method, EstimateMethod::Heuristic);
        assert_eq!(heuristic.output_limit, reference.output_limit);
        assert!(err.abs() <= MAX_MEDIAN, "{name}: {:.1}%", err * 100.0);
    }
}

#[cfg(feature = "cl100k")]
#[test]
fn cl100k_estimator_counts_with_the_tokenizer() {
    use bedrock_throttle::estimate::{
        Cl100kEstimator, EstimateMethod, Operation, RequestInfo, TokenEstimator,
    };
    let (_, text) = samples("code").remove(0);
    let body = serde_json::to_vec(&serde_json::json!({"prompt": text, "max_gen_len": 64})).unwrap();
    let estimate = Cl100kEstimator::new().estimate(&RequestInfo {
        model: Some("meta.llama3-8b-instruct-v1:0"),
        operation: Operation::Invoke,
        body: &body,
    });
    assert_eq!(estimate.method, EstimateMethod::Tokenizer);
    assert_eq!(estimate.input_tokens, cl100k(&text));
    assert_eq!(
        (estimate.output_limit, estimate.output_limit_from_body),
        (64, true)
    );
}
