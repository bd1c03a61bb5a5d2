//! `ring bench` end to end, tiny: the peer process starts, gets its fds,
//! runs jobs, and the output keeps its shape (tables, ratios, PASS/MISS).

use std::process::{Command, Stdio};

#[test]
fn ring_bench_runs_a_tiny_cross_process_group() {
    let out = Command::new(env!("CARGO_BIN_EXE_ring"))
        .args([
            "bench",
            "--quick",
            "--rounds",
            "1",
            "--sample-ms",
            "2",
            "--only",
            "4 KiB chunks, cross-process",
            "--only",
            "eventfd-blocking, cross-process",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("error:"), "{text}");
    assert!(text.contains("== 4 KiB chunks, cross-process"), "{text}");
    assert!(
        text.contains("== 64-byte round trip, eventfd-blocking, cross-process"),
        "{text}"
    );
    assert!(text.contains("vchan stream, eventfd"), "{text}");
    let verdicts = text.matches("PASS").count() + text.matches("MISS").count();
    assert_eq!(verdicts, 7, "{text}");
    assert!(text.contains("# machine:") && text.contains("# load average before:"));
}

#[test]
fn ring_bench_markdown_has_tables() {
    let out = Command::new(env!("CARGO_BIN_EXE_ring"))
        .args([
            "bench",
            "--markdown",
            "--no-process",
            "--rounds",
            "1",
            "--sample-ms",
            "2",
            "--only",
            "busy-polled, cross-thread",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("### 64-byte round trip, busy-polled, cross-thread"),
        "{text}"
    );
    assert!(text.contains("| contender | p50 ns | p99 ns |"), "{text}");
    assert!(
        text.contains("| rtrb (indices on their own lines) |"),
        "{text}"
    );
    assert!(text.contains("- **"), "{text}");
}
