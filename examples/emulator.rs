//! A standalone emulated Bedrock runtime, for load demos and manual tests.
//!
//! ```text
//! cargo run --example emulator --features emulator -- --port 8080 --tpm 400000 --rpm 50 --period-secs 60
//! ```
//!
//! Point an AWS SDK client at the printed URL with `endpoint_url`; any credentials work.
//! Other flags: `--seed N`, `--first-token-ms N`, `--per-token-ms N`, `--chars-per-token F`.

use std::net::SocketAddr;
use std::time::Duration;

use bedrock_throttle::emulator::{EmulatedQuota, Emulator, LatencyModel};

fn usage() -> ! {
    eprintln!(
        "usage: emulator [--port N] [--tpm N] [--rpm N] [--tpd N] [--period-secs N] [--seed N] \
         [--first-token-ms N] [--per-token-ms N] [--chars-per-token F]"
    );
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(flag: &str, value: Option<String>) -> T {
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        eprintln!("{flag} needs a valid value");
        usage()
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut port: u16 = 0;
    let mut quota = EmulatedQuota::default();
    let mut latency = LatencyModel::default();
    let mut seed: Option<u64> = None;
    let mut chars_per_token = 3.6;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => port = parse(&flag, args.next()),
            "--tpm" => quota.tpm = parse(&flag, args.next()),
            "--rpm" => quota.rpm = Some(parse(&flag, args.next())),
            "--tpd" => quota.tpd = Some(parse(&flag, args.next())),
            "--period-secs" => quota.period = Duration::from_secs(parse(&flag, args.next())),
            "--seed" => seed = Some(parse(&flag, args.next())),
            "--first-token-ms" => {
                latency.first_token = Duration::from_millis(parse(&flag, args.next()))
            }
            "--per-token-ms" => {
                latency.per_output_token = Duration::from_millis(parse(&flag, args.next()))
            }
            "--chars-per-token" => chars_per_token = parse(&flag, args.next()),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }

    let mut builder = Emulator::builder()
        .bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .default_quota(quota)
        .latency(latency)
        .chars_per_token(chars_per_token);
    if let Some(seed) = seed {
        builder = builder.seed(seed);
    }
    let emu = builder.spawn().await?;
    println!("{}", emu.endpoint_url());
    eprintln!(
        "bedrock emulator: rpm {:?}, tpm {}, tpd {:?}, period {:?}; Ctrl-C to stop",
        quota.rpm, quota.tpm, quota.tpd, quota.period
    );
    tokio::signal::ctrl_c().await?;
    let stats = emu.stats();
    for (model, s) in &stats.models {
        eprintln!(
            "{model}: admitted {}, throttled rpm/tpm/tpd {}/{}/{}, billed {} tokens",
            s.admitted, s.throttled_rpm, s.throttled_tpm, s.throttled_tpd, s.tokens_billed
        );
    }
    emu.shutdown().await;
    Ok(())
}
