//! How `ring inspect` shows a decoded state: the table a person reads, and
//! one JSON object a script reads (the same facts, with names for the live
//! bytes and notify bits).

use ring_core::vchan::{Live, NotifyBits};
use ring_hosted::inspect::{Owed, RingState, VchanState, VmbusRingState, VmbusState};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// A live byte's meaning, or `INVALID`.
fn live_name(b: u8) -> &'static str {
    match Live::from_byte(b) {
        Some(Live::Closed) => "closed",
        Some(Live::Connected) => "connected",
        Some(Live::Waiting) => "waiting",
        None => "INVALID",
    }
}

/// A notify byte's requests, `write+read` style; `-` for none.
fn bits_name(b: u8) -> String {
    let mut v = Vec::new();
    if b & NotifyBits::WRITE.bits() != 0 {
        v.push("write");
    }
    if b & NotifyBits::READ.bits() != 0 {
        v.push("read");
    }
    if b & !NotifyBits::all().bits() != 0 {
        v.push("UNKNOWN-BITS");
    }
    if v.is_empty() {
        "-".into()
    } else {
        v.join("+")
    }
}

fn owed_json(owed: &[Owed]) -> Value {
    owed.iter()
        .map(|o| json!({ "from": o.from, "to": o.to, "why": o.why.to_string() }))
        .collect()
}

fn owed_text(out: &mut String, owed: &[Owed]) {
    if owed.is_empty() {
        out.push_str("signals owed: none\n");
    }
    for o in owed {
        let _ = writeln!(out, "signal owed: {} -> {}: {}", o.from, o.to, o.why);
    }
}

fn ring_json(r: &RingState) -> Value {
    json!({
        "writer": r.writer, "reader": r.reader, "order": r.order, "size": r.size,
        "prod": r.prod, "cons": r.cons, "used": r.used, "free": r.free,
        "consistent": r.consistent(),
    })
}

/// A vchan state as one JSON object.
pub(crate) fn vchan_json(s: &VchanState) -> Value {
    json!({
        "proto": "vchan",
        "left": ring_json(&s.left),
        "right": ring_json(&s.right),
        "client_live": live_name(s.cli_live),
        "server_live": live_name(s.srv_live),
        "client_notify": bits_name(s.cli_notify),
        "server_notify": bits_name(s.srv_notify),
        "orders_problem": s.orders_problem.map(|p| p.to_string()),
        "owed": owed_json(&s.owed),
    })
}

/// A vchan state as a table and a few lines.
pub(crate) fn vchan_text(s: &VchanState) -> String {
    let mut out = String::new();
    let row = |out: &mut String, cells: [&str; 8]| {
        let [a, b, c, d, e, f, g, h] = cells;
        let _ = write!(
            out,
            "{a:<6} {b:<16} {c:>5} {d:>8} {e:>10} {f:>10} {g:>8} {h:>8}"
        );
    };
    row(
        &mut out,
        [
            "ring",
            "direction",
            "order",
            "size",
            "prod",
            "cons",
            "used",
            "free",
        ],
    );
    out.push('\n');
    for r in [&s.left, &s.right] {
        let unknown = || "?".to_string();
        row(
            &mut out,
            [
                r.name,
                &format!("{}->{}", r.writer, r.reader),
                &r.order.to_string(),
                &r.size.map_or_else(unknown, |v| v.to_string()),
                &r.prod.to_string(),
                &r.cons.to_string(),
                &r.used.to_string(),
                &r.free.map_or_else(unknown, |v| v.to_string()),
            ],
        );
        out.push_str(if r.consistent() {
            "\n"
        } else {
            "  INCONSISTENT\n"
        });
    }
    let _ = writeln!(
        out,
        "live: client {} ({}), server {} ({})",
        live_name(s.cli_live),
        s.cli_live,
        live_name(s.srv_live),
        s.srv_live
    );
    let _ = writeln!(
        out,
        "notify: server asks client to kick on {}; client asks server to kick on {}",
        bits_name(s.cli_notify),
        bits_name(s.srv_notify)
    );
    if let Some(p) = &s.orders_problem {
        let _ = writeln!(out, "orders: INVALID ({p})");
    }
    owed_text(&mut out, &s.owed);
    out
}

fn vmbus_ring_json(r: &VmbusRingState) -> Value {
    json!({
        "writer": r.writer, "reader": r.reader, "data_size": r.data_size,
        "write_index": r.write_index, "read_index": r.read_index,
        "interrupt_mask": r.interrupt_mask, "pending_send_size": r.pending_send_size,
        "feature_bits": r.feature_bits, "used": r.used,
    })
}

/// A VMBus state as one JSON object.
pub(crate) fn vmbus_json(s: &VmbusState) -> Value {
    json!({
        "proto": "vmbus",
        "to_server": vmbus_ring_json(&s.to_server),
        "to_client": vmbus_ring_json(&s.to_client),
        "owed": owed_json(&s.owed),
    })
}

/// A VMBus state as a table and a few lines.
pub(crate) fn vmbus_text(s: &VmbusState) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<16} {:>8} {:>8} {:>8} {:>8} {:>5} {:>8} {:>5}",
        "ring", "direction", "size", "write", "read", "used", "mask", "pending", "feat"
    );
    for r in [&s.to_server, &s.to_client] {
        let _ = writeln!(
            out,
            "{:<10} {:<16} {:>8} {:>8} {:>8} {:>8} {:>5} {:>8} {:>5}",
            r.name,
            format!("{}->{}", r.writer, r.reader),
            r.data_size,
            r.write_index,
            r.read_index,
            r.used.map_or_else(|| "INVALID".into(), |u| u.to_string()),
            r.interrupt_mask,
            r.pending_send_size,
            r.feature_bits
        );
    }
    owed_text(&mut out, &s.owed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring_hosted::inspect::{decode_vchan, decode_vmbus, VMBUS_HEADER_LEN};

    #[test]
    fn a_quiet_vchan_page_reads_in_words_and_in_json() {
        let mut p = [0u8; 24];
        p[16] = 12;
        p[18] = 13;
        p[20] = 2;
        p[21] = 1;
        let s = decode_vchan(&p).unwrap();
        let text = vchan_text(&s);
        assert!(text.contains("client waiting (2)"), "{text}");
        assert!(text.contains("signals owed: none"), "{text}");
        let j = vchan_json(&s);
        assert_eq!(j["client_live"], "waiting");
        assert_eq!(j["right"]["free"], 8192);
        assert!(j["orders_problem"].is_null());
        assert!(j.to_string().starts_with("{\"proto\":\"vchan\""));
    }

    #[test]
    fn nonsense_is_shown_as_such() {
        let mut p = [0u8; 24];
        p[4..8].copy_from_slice(&100_000u32.to_le_bytes());
        p[16] = 30;
        p[18] = 13;
        p[20] = 9;
        p[22] = 0x81;
        let s = decode_vchan(&p).unwrap();
        let text = vchan_text(&s);
        assert!(text.contains("INCONSISTENT"), "{text}");
        assert!(text.contains("client INVALID (9)"), "{text}");
        assert!(text.contains("orders: INVALID (ring order 30"), "{text}");
        let j = vchan_json(&s);
        assert_eq!(j["client_notify"], "write+UNKNOWN-BITS");
        assert_eq!(j["left"]["size"], Value::Null);
        assert_eq!(j["left"]["consistent"], false);

        let mut a = [0u8; VMBUS_HEADER_LEN];
        a[0..4].copy_from_slice(&5u32.to_le_bytes());
        let b = [0u8; VMBUS_HEADER_LEN];
        let s = decode_vmbus(&a, 4096, &b, 4096).unwrap();
        assert!(vmbus_text(&s).contains("INVALID"));
        let j = vmbus_json(&s);
        assert!(j.to_string().starts_with("{\"proto\":\"vmbus\""));
        assert_eq!(j["to_server"]["used"], Value::Null);
        assert_eq!(j["to_client"]["used"], 0);
    }
}
