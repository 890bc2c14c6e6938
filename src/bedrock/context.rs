//! Which context window a request uses: the model's standard one, or its 1M-token variant.
//!
//! AWS counts a model's 1M-context use against quotas of its own (listed in Service Quotas
//! as `… 1M Context Length`). Anthropic's models use the 1M window when a request sets the
//! beta flag `context-1m-2025-08-07` (InvokeModel: `"anthropic_beta": [...]` in the body;
//! Converse: the same field inside `additionalModelRequestFields`), and requests over
//! 200,000 input tokens need it (Anthropic, "Context windows",
//! <https://docs.anthropic.com/en/docs/build-with-claude/context-windows>). The input count
//! here is the estimate's, so a request near 200K may be filed on either side.

use memchr::memmem;

use crate::ContextWindow;

/// Input tokens above which a request can only run in the 1M-token context.
pub(crate) const STANDARD_CONTEXT_TOKENS: u64 = 200_000;

/// The prefix of Anthropic's 1M-context beta flags.
const BETA_1M: &str = "context-1m";

/// The context window of a request with `input_tokens` (estimated) and this body.
pub(crate) fn context_window(body: &[u8], input_tokens: u64) -> ContextWindow {
    if input_tokens > STANDARD_CONTEXT_TOKENS || asks_for_1m(body) {
        ContextWindow::OneMillion
    } else {
        ContextWindow::Standard
    }
}

/// The context window of an estimate without a body (set by hand): by its input alone.
pub(crate) fn context_window_of_input(input_tokens: u64) -> ContextWindow {
    context_window(&[], input_tokens)
}

/// Whether the body sets an `anthropic_beta` flag starting with `context-1m`, at the top
/// level or in Converse's `additionalModelRequestFields`. Bodies that never spell the flag
/// are not parsed.
fn asks_for_1m(body: &[u8]) -> bool {
    if memmem::find(body, BETA_1M.as_bytes()).is_none() {
        return false;
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let flags = |v: &serde_json::Value| {
        v.get("anthropic_beta")
            .and_then(|b| b.as_array())
            .is_some_and(|a| {
                a.iter()
                    .filter_map(|f| f.as_str())
                    .any(|f| f.starts_with(BETA_1M))
            })
    };
    flags(&json) || json.get("additionalModelRequestFields").is_some_and(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_1m_window_is_the_beta_flag_or_a_long_input() {
        let invoke = br#"{"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["context-1m-2025-08-07"],"max_tokens":10,"messages":[]}"#;
        assert_eq!(context_window(invoke, 10), ContextWindow::OneMillion);
        let converse = br#"{"messages":[],"additionalModelRequestFields":{"anthropic_beta":["interleaved-thinking-2025-05-14","context-1m-2025-08-07"]}}"#;
        assert_eq!(context_window(converse, 10), ContextWindow::OneMillion);
        // Other flags, or the words in a prompt, are not the flag.
        let other = br#"{"anthropic_beta":["token-efficient-tools-2025-02-19"],"messages":[]}"#;
        assert_eq!(context_window(other, 10), ContextWindow::Standard);
        let prompt =
            br#"{"messages":[{"role":"user","content":"what is context-1m-2025-08-07?"}]}"#;
        assert_eq!(context_window(prompt, 10), ContextWindow::Standard);
        assert_eq!(
            context_window(b"not json context-1m", 10),
            ContextWindow::Standard
        );
        // Past 200K input tokens only the 1M window fits.
        assert_eq!(context_window(b"{}", 200_000), ContextWindow::Standard);
        assert_eq!(context_window(b"{}", 200_001), ContextWindow::OneMillion);
        assert_eq!(context_window_of_input(250_000), ContextWindow::OneMillion);
    }
}
