//! Runs the black-box kill loop for a bounded time: at least 100 SIGKILLs of a multi-threaded
//! worker, each followed by a reopen verified against the memory-mapped expected state.
//!
//! Environment: `TTLSTORE_TORTURE_LONG=1` runs it for an hour (`TTLSTORE_TORTURE_SECONDS=N` for
//! N seconds) with no kill limit.

use std::process::Command;

#[test]
fn kill_loop_verifies_every_acknowledged_write() {
    let long = std::env::var("TTLSTORE_TORTURE_LONG").is_ok_and(|v| v == "1");
    let seconds: u64 = std::env::var("TTLSTORE_TORTURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if long { 3600 } else { 90 });
    let kills: u64 = if long || std::env::var("TTLSTORE_TORTURE_SECONDS").is_ok() {
        u64::MAX
    } else {
        100
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ttlstore-torture"))
        .args(["run", "--dir"])
        .arg(dir.path())
        .args([
            "--kills",
            &kills.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--threads",
            "4",
            "--keys",
            "256",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the kill loop failed:\n{stdout}\n{stderr}"
    );
    let done: u64 = stdout
        .split_whitespace()
        .skip_while(|w| *w != "ttlstore-torture:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"));
    eprintln!("{}", stdout.trim());
    assert!(long || done >= 100, "only {done} kills in {seconds} s");
}
