//! `--timeline FILE.csv`: once a second, the gate's view of each quota key beside the
//! emulator's buckets for the same key, so a throttle's cause can be read off.

use std::fmt::Write as _;

use bedrock_throttle::{emulator::EmulatorHandle, QuotaKey, ThrottleConfig};

/// The CSV header; one row per stack, second and model follows it.
pub const HEADER: &str = "stack,seconds,model,\
gate_tokens_available,gate_requests_available,gate_token_rate,gate_request_rate,\
gate_queued,gate_admitted,gate_throttled,\
upstream_tokens_available,upstream_requests_available,upstream_tokens_reserved,\
upstream_in_flight,upstream_admitted,upstream_throttled";

/// Appends a row per model: the gate's buckets, rates (per quota period), queue and
/// counters (empty for a stack without the gate), then the emulator's.
pub fn sample(
    out: &mut String,
    stack: &str,
    seconds: f64,
    models: &[&str],
    gate: Option<&ThrottleConfig>,
    emu: &EmulatorHandle,
) {
    let gate_stats = gate.map(ThrottleConfig::stats);
    let upstream_stats = emu.stats();
    for &model in models {
        let key = QuotaKey::new(Some(model), None);
        let k = gate_stats.as_ref().and_then(|s| s.key(&key));
        let effective = k.and_then(|k| k.effective);
        let q = emu.quota(model);
        let u = upstream_stats.model(model);
        let _ = writeln!(
            out,
            "{stack},{seconds:.1},{model},{},{},{},{},{},{},{},{:.0},{},{},{},{},{}",
            opt(k
                .and_then(|k| k.tokens_available)
                .map(|t| format!("{t:.0}"))),
            opt(k
                .and_then(|k| k.requests_available)
                .map(|r| format!("{r:.1}"))),
            opt(effective.map(|e| e.tokens())),
            opt(effective.and_then(|e| e.requests())),
            opt(k.map(|k| k.queue_depth)),
            opt(k.map(|k| k.admitted)),
            opt(k.map(|k| k.throttled)),
            q.tokens_available,
            opt(q.requests_available.map(|r| format!("{r:.1}"))),
            q.tokens_reserved,
            q.in_flight,
            u.admitted,
            u.throttled_rpm
                + u.throttled_tpm
                + u.throttled_tpd
                + u.faults_stream_throttle_first
                + u.faults_stream_throttle,
        );
    }
}

/// A value, or an empty CSV field.
fn opt(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}
