//! `ring inspect`: decode and validate the control state of rings in a
//! file or in a process's memfds, never blocking and never mapping them.

mod report;

use super::*;
use ring_hosted::inspect;
use serde_json::Value;

/// Inspects the ring memfds of process `pid`: the fds whose link names a
/// memfd this crate made (`/memfd:ring-vchan`, `/memfd:ring-vmbus`). What
/// cannot be read is listed and skipped; the exit status is the worst
/// found (3 corrupt over 1 unreadable over 0).
pub(crate) fn inspect_pid(pid: u32, json: bool) -> Outcome {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut found: Vec<(u32, PathBuf, Proto)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let link = link.to_string_lossy();
            let proto = if link.starts_with("/memfd:ring-vmbus") {
                Proto::Vmbus
            } else if link.starts_with("/memfd:ring-") {
                Proto::Vchan
            } else {
                return None;
            };
            Some((e.file_name().to_str()?.parse().ok()?, e.path(), proto))
        })
        .collect();
    found.sort_by_key(|f| f.0);
    if found.is_empty() {
        return Err(format!("process {pid} holds no ring memory").into());
    }
    let (mut shown, mut worst) = (0, None::<Failure>);
    for (fd, path, proto) in found {
        if !json {
            println!("== {} (fd {fd}, {})", path.display(), proto.name());
        }
        match inspect_file(&path, proto, None, json) {
            Ok(()) => shown += 1,
            // The fd was closed between listing and reading: skip it.
            Err(_) if std::fs::symlink_metadata(&path).is_err() => {}
            Err(e) => {
                eprintln!("ring: fd {fd}: {}", e.reason);
                if worst.as_ref().is_none_or(|w| e.code > w.code) {
                    worst = Some(e);
                }
            }
        }
    }
    match worst {
        Some(w) => Err(w),
        None if shown == 0 => Err(format!("process {pid} holds no ring memory").into()),
        None => Ok(()),
    }
}

/// Prints what validation found (in the table, or as a `findings` array
/// in the JSON object) and turns any finding into exit 3.
fn report(
    mut text: String,
    mut json: Value,
    as_json: bool,
    findings: &[inspect::validate::Finding],
) -> Outcome {
    if as_json {
        let list = findings
            .iter()
            .map(|f| serde_json::json!({ "offset": f.offset, "what": f.what }))
            .collect();
        if let Some(object) = json.as_object_mut() {
            object.insert("findings".into(), list);
        }
        println!("{json}");
    } else {
        for f in findings {
            text.push_str(&format!("INVALID {f}\n"));
        }
        print!("{text}");
    }
    match findings.first() {
        None => Ok(()),
        Some(first) => Err(Failure {
            code: exit::CORRUPT,
            reason: format!("{} finding(s); the first {first}", findings.len()),
        }),
    }
}

pub(crate) fn inspect_file(
    file: &Path,
    proto: Proto,
    data_size: Option<u64>,
    json: bool,
) -> Outcome {
    let image = snapshot(file, proto, data_size)?;
    match proto {
        Proto::Vchan => {
            let header = image.get(..inspect::HEADER_LEN).ok_or_else(|| {
                format!(
                    "{} ({} bytes) is shorter than a vchan control header",
                    file.display(),
                    image.len()
                )
            })?;
            let state = inspect::decode_vchan(header).map_err(|e| e.to_string())?;
            let findings = inspect::validate::vchan(&image, &state);
            let (text, object) = (report::vchan_text(&state), report::vchan_json(&state));
            report(text, object, json, &findings)
        }
        Proto::Vmbus => {
            const PAGE: u64 = 4096;
            let len = image.len() as u64;
            let first = match data_size {
                Some(d) => Some(d),
                None => (len / 2).checked_sub(PAGE),
            };
            let second = first.and_then(|f| len.checked_sub(2 * PAGE)?.checked_sub(f));
            let fits = |d: Option<u64>| {
                d.filter(|&d| d > 0 && d.is_multiple_of(PAGE) && d <= u64::from(u32::MAX))
            };
            let (Some(first), Some(second)) = (fits(first), fits(second)) else {
                return Err(format!(
                    "{} ({len} bytes) is not two VMBus rings of whole pages{} (give --data-size)",
                    file.display(),
                    data_size.map_or(String::new(), |d| format!(" with {d} data bytes first")),
                )
                .into());
            };
            let page = PAGE as usize;
            let header = |at: usize| {
                image
                    .get(at..at + inspect::VMBUS_HEADER_LEN)
                    .ok_or_else(|| format!("{} is too short for its rings", file.display()))
            };
            let a = header(0)?;
            let b = header(page + first as usize)?;
            let state = inspect::decode_vmbus(a, first as u32, b, second as u32)
                .map_err(|e| e.to_string())?;
            let findings = inspect::validate::vmbus(&image, first as u32, second as u32, &state);
            let (text, object) = (report::vmbus_text(&state), report::vmbus_json(&state));
            report(text, object, json, &findings)
        }
        other => Err(format!("cannot inspect protocol {}", other.name()).into()),
    }
}

/// How many reads may find the rings moving before a live ring counts as
/// too busy to snapshot.
const SNAPSHOT_TRIES: usize = 50;

/// A copy of `file` taken while no ring index moved: the index words are
/// read again right after the copy (they alone, not the whole image), and
/// the copy is kept only if they are unchanged (the published packets or
/// bytes between them were then not touched while we copied). A live
/// ring's copy taken while its peers publish is torn, and validating one
/// would report corruption that is not there. After [`SNAPSHOT_TRIES`]
/// torn copies: exit 9, "busy".
fn snapshot(file: &Path, proto: Proto, data_size: Option<u64>) -> Result<Vec<u8>, Failure> {
    let cannot = |e: std::io::Error| Failure::from(format!("cannot read {}: {e}", file.display()));
    for _ in 0..SNAPSHOT_TRIES {
        let image = inspect::validate::read_image(file).map_err(cannot)?;
        let mut held = true;
        for (at, len) in index_words(image.len(), proto, data_size) {
            let mut now = vec![0u8; len];
            std::os::unix::fs::FileExt::read_exact_at(
                &std::fs::File::open(file).map_err(cannot)?,
                &mut now,
                at as u64,
            )
            .map_err(cannot)?;
            held &= image.get(at..at + len) == Some(&now[..]);
        }
        if held {
            return Ok(image);
        }
    }
    Err(Failure {
        code: exit::BUSY,
        reason: format!(
            "{}: busy: the ring indices moved during each of {SNAPSHOT_TRIES} reads, \
             so no copy of the rings is consistent",
            file.display()
        ),
    })
}

/// Where an image's index words are, as (offset, length): vchan's four
/// (the first 16 bytes of the control page); VMBus's write and read index
/// of each ring (the first 8 bytes of each control page: at 0, and after
/// the first ring's data). Only those that lie within the image.
fn index_words(len: usize, proto: Proto, data_size: Option<u64>) -> Vec<(usize, usize)> {
    let words = match proto {
        Proto::Vmbus => {
            let second = match data_size {
                Some(d) => usize::try_from(d)
                    .unwrap_or(usize::MAX)
                    .saturating_add(4096),
                None => len / 2,
            };
            vec![(0, 8), (second, 8)]
        }
        _ => vec![(0, 16)],
    };
    words
        .into_iter()
        .filter(|&(at, n)| at.checked_add(n).is_some_and(|end| end <= len))
        .collect()
}
