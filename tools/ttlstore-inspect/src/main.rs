//! `ttlstore-inspect`: see, verify and summarise a ttlstore data directory from the shell.
//!
//! A thin shell over [`ttlstore::inspect`]: that module reads the files (read-only, no lock, safe
//! while a process has the store open); this program parses arguments and prints.
//!
//! Exit status: 0 on success; 1 when `verify` finds a problem or `get` finds no live value; 2
//! when the command could not run (bad arguments, not a store, unreadable or corrupt files).

mod time;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value as Json, json};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use ttlstore::Namespace;
use ttlstore::inspect::{
    self, Damage, ExpiryHistogram, Finding, Inspector, Lookup, OpKind, OpRecord, RecordEntry,
    SpaceStats, StatsReport, VerifyReport,
};

#[derive(Parser, Debug)]
#[command(
    name = "ttlstore-inspect",
    version,
    about = "See, verify and summarise a ttlstore data directory (read-only; safe while the store is open)"
)]
struct Cli {
    /// Print JSON: one object a line for `dump`, one document for the other commands.
    #[arg(long, global = true)]
    json: bool,
    /// Evaluate expiry at this time instead of now: unix milliseconds or RFC 3339
    /// (2024-05-01T12:00:00Z).
    #[arg(long, global = true, value_name = "TIME")]
    time_at: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One line a record: segment, offset, sequence, kind, key, value, expiry, checksum.
    Dump {
        /// A data directory or one segment file.
        path: PathBuf,
        /// Only this key (escapes like `\x00` are understood).
        #[arg(long)]
        key: Option<String>,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only this kind of operation (`batch`: every operation inside a batch record).
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Only sequence numbers at least this.
        #[arg(long, value_name = "SEQ")]
        from_seq: Option<u64>,
        /// Only puts that hold their key's current, unexpired value.
        #[arg(long)]
        live_only: bool,
        /// Only this namespace: default, threads, queues, caches or a number.
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
    },
    /// Check every header, record checksum, sequence and file; exit 1 if anything is wrong.
    Verify {
        /// A data directory or one segment file.
        path: PathBuf,
    },
    /// Space, records and expiry per segment and in total.
    Stats {
        /// A data directory or one segment file.
        path: PathBuf,
    },
    /// The current value of a key and its remaining TTL; exit 1 if it has none.
    Get {
        /// A data directory or one segment file.
        path: PathBuf,
        /// The key (escapes like `\x00` are understood).
        key: String,
        /// The key's namespace: default, threads, queues, caches or a number.
        #[arg(long, value_name = "NS", default_value = "default")]
        namespace: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum KindArg {
    Put,
    Delete,
    Expire,
    Batch,
}

/// Why the program stops: an error message (exit 2), or output that could not be written.
enum Failure {
    Msg(String),
    Output(io::Error),
}

impl From<ttlstore::Error> for Failure {
    fn from(e: ttlstore::Error) -> Self {
        Failure::Msg(e.to_string())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Output(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = run(&cli, &mut out).and_then(|code| {
        out.flush()?;
        Ok(code)
    });
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`| head`): nothing more to say.
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Msg(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn run(cli: &Cli, out: &mut impl Write) -> Result<u8, Failure> {
    let at_ms = match &cli.time_at {
        Some(t) => time::parse_time(t).map_err(Failure::Msg)?,
        None => now_ms(),
    };
    match &cli.cmd {
        Cmd::Dump {
            path,
            key,
            prefix,
            kind,
            from_seq,
            live_only,
            namespace,
        } => {
            let filter = Filter {
                key: key.as_deref().map(inspect::unescape_bytes).transpose()?,
                prefix: prefix.as_deref().map(inspect::unescape_bytes).transpose()?,
                kind: *kind,
                from_seq: *from_seq,
                namespace: namespace
                    .as_deref()
                    .map(inspect::parse_namespace)
                    .transpose()?,
                live: None,
            };
            let ins = Inspector::open(path)?;
            let filter = Filter {
                live: if *live_only {
                    Some(ins.live_set(at_ms)?)
                } else {
                    None
                },
                ..filter
            };
            dump(&ins, &filter, at_ms, cli.json, out)
        }
        Cmd::Verify { path } => {
            let report = Inspector::open(path)?.verify()?;
            print_verify(&report, path, cli.json, out)?;
            Ok(if report.is_clean() { 0 } else { 1 })
        }
        Cmd::Stats { path } => {
            let report = Inspector::open(path)?.stats(at_ms)?;
            print_stats(&report, cli.json, out)?;
            Ok(0)
        }
        Cmd::Get {
            path,
            key,
            namespace,
        } => {
            let ns = inspect::parse_namespace(namespace)?;
            let key = inspect::unescape_bytes(key)?;
            let found = Inspector::open(path)?.get(ns, &key, at_ms)?;
            print_get(ns, &key, &found, at_ms, cli.json, out)?;
            Ok(if matches!(found, Lookup::Live(_)) {
                0
            } else {
                1
            })
        }
    }
}

struct Filter {
    key: Option<Vec<u8>>,
    prefix: Option<Vec<u8>>,
    kind: Option<KindArg>,
    from_seq: Option<u64>,
    namespace: Option<Namespace>,
    live: Option<inspect::LiveSet>,
}

impl Filter {
    fn keeps_op(&self, r: &OpRecord) -> bool {
        self.key.as_ref().is_none_or(|k| r.key == *k)
            && self.prefix.as_ref().is_none_or(|p| r.key.starts_with(p))
            && self.from_seq.is_none_or(|s| r.seq >= s)
            && self.namespace.is_none_or(|n| r.namespace == n)
            && self
                .live
                .as_ref()
                .is_none_or(|l| r.kind == OpKind::Put && l.contains(r.seq))
            && match self.kind {
                None => true,
                Some(KindArg::Batch) => r.batch.is_some(),
                Some(KindArg::Put) => r.kind == OpKind::Put,
                Some(KindArg::Delete) => r.kind == OpKind::Delete,
                Some(KindArg::Expire) => r.kind == OpKind::Expire,
            }
    }

    /// Damaged stretches have no key or kind: they show unless the filter selects by those.
    fn keeps_damage(&self) -> bool {
        self.key.is_none()
            && self.prefix.is_none()
            && self.kind.is_none()
            && self.namespace.is_none()
            && self.live.is_none()
    }
}

fn dump(
    ins: &Inspector,
    filter: &Filter,
    at_ms: u64,
    json: bool,
    out: &mut impl Write,
) -> Result<u8, Failure> {
    for entry in ins.records() {
        match entry? {
            RecordEntry::Op(r) if filter.keeps_op(&r) => {
                if json {
                    writeln!(out, "{}", op_json(&r, at_ms))?;
                } else {
                    writeln!(out, "{}", op_line(&r, at_ms))?;
                }
            }
            RecordEntry::Damaged(d) if filter.keeps_damage() => {
                if json {
                    writeln!(out, "{}", damage_json(&d))?;
                } else {
                    writeln!(out, "{}", damage_line(&d))?;
                }
            }
            _ => {}
        }
    }
    Ok(0)
}

fn kind_label(r: &OpRecord) -> String {
    match r.batch {
        Some(b) => format!("batch[{}/{}]:{}", b.index + 1, b.count, r.kind),
        None => r.kind.to_string(),
    }
}

fn expiry_text(expires_at: Option<u64>, at_ms: u64) -> String {
    match expires_at {
        Some(e) => format!("{} ({})", time::rfc3339(e), time::remaining(e, at_ms)),
        None => "never".into(),
    }
}

fn preview_text(preview: &[u8], len: u64) -> String {
    let more = if (preview.len() as u64) < len {
        "..."
    } else {
        ""
    };
    format!("\"{}\"{more}", inspect::escape_bytes(preview))
}

fn key_text(ns: Namespace, key: &[u8]) -> String {
    match inspect::key_description(ns, key) {
        Some(d) => format!("[{d}]"),
        None => format!("\"{}\"", inspect::escape_bytes(key)),
    }
}

fn op_line(r: &OpRecord, at_ms: u64) -> String {
    let mut s = format!(
        "segment={} offset={} seq={} kind={} ns={} key={}",
        r.segment,
        r.offset,
        r.seq,
        kind_label(r),
        inspect::namespace_label(r.namespace),
        key_text(r.namespace, &r.key)
    );
    match r.kind {
        OpKind::Put => {
            s.push_str(&format!(
                " value_len={} value={} expires={}",
                r.value_len,
                preview_text(&r.value_preview, r.value_len),
                expiry_text(r.expires_at, at_ms)
            ));
            if let Some(d) = &r.value_description {
                s.push_str(&format!(" meaning=[{d}]"));
            }
        }
        OpKind::Expire => s.push_str(&format!(" target_seq={}", r.target_seq.unwrap_or(0))),
        OpKind::Delete => {}
    }
    s.push_str(" crc=ok");
    if let Some(p) = &r.problem {
        s.push_str(&format!(" problem=\"{p}\""));
    }
    s
}

fn expiry_json(expires_at: Option<u64>, at_ms: u64) -> Json {
    match expires_at {
        Some(e) => json!({
            "unix_ms": e,
            "rfc3339": time::rfc3339(e),
            "remaining_ms": e as i128 - at_ms as i128,
            "expired": e <= at_ms,
        }),
        None => Json::Null,
    }
}

fn op_json(r: &OpRecord, at_ms: u64) -> Json {
    json!({
        "segment": r.segment,
        "offset": r.offset,
        "record_len": r.record_len,
        "seq": r.seq,
        "kind": r.kind.name(),
        "batch": r.batch.map(|b| json!({"index": b.index, "count": b.count})),
        "namespace": inspect::namespace_label(r.namespace),
        "namespace_id": r.namespace.id(),
        "key": inspect::escape_bytes(&r.key),
        "key_description": inspect::key_description(r.namespace, &r.key),
        "value_len": r.value_len,
        "value_preview": (r.kind == OpKind::Put).then(|| inspect::escape_bytes(&r.value_preview)),
        "value_description": r.value_description,
        "expires": expiry_json(r.expires_at, at_ms),
        "target_seq": r.target_seq,
        "crc": "ok",
        "problem": r.problem.as_ref().map(|p| p.to_string()),
    })
}

fn damage_line(d: &Damage) -> String {
    if d.torn_tail {
        format!(
            "segment={} offset={} len={} crc=torn-tail note=\"{}; the end of the data (unfinished append)\"",
            d.segment, d.offset, d.len, d.kind
        )
    } else {
        format!(
            "segment={} offset={} len={} crc=BAD error=\"{}\"",
            d.segment, d.offset, d.len, d.kind
        )
    }
}

fn damage_json(d: &Damage) -> Json {
    json!({
        "segment": d.segment,
        "offset": d.offset,
        "len": d.len,
        "crc": if d.torn_tail { "torn_tail" } else { "bad" },
        "error": d.kind.to_string(),
    })
}

fn finding_json(f: &Finding) -> Json {
    json!({"file": f.file, "segment": f.segment, "offset": f.offset, "message": f.message})
}

fn print_verify(r: &VerifyReport, path: &Path, json: bool, out: &mut impl Write) -> io::Result<()> {
    if json {
        let doc = json!({
            "path": path.display().to_string(),
            "clean": r.is_clean(),
            "segments": r.segments,
            "records": r.records,
            "bytes": r.bytes,
            "problems": r.problems.iter().map(finding_json).collect::<Vec<_>>(),
            "notes": r.notes.iter().map(finding_json).collect::<Vec<_>>(),
        });
        return writeln!(out, "{doc}");
    }
    for p in &r.problems {
        writeln!(out, "problem: {p}")?;
    }
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    let verdict = if r.is_clean() {
        "clean".to_string()
    } else {
        format!("{} problem(s)", r.problems.len())
    };
    writeln!(
        out,
        "{}: {} segment(s), {} record(s), {} bytes checked: {verdict}",
        path.display(),
        r.segments,
        r.records,
        r.bytes
    )
}

fn amp_text(s: &SpaceStats) -> String {
    s.space_amplification()
        .map_or_else(|| "n/a (nothing live)".into(), |a| format!("{a:.2}"))
}

fn space_line(s: &SpaceStats) -> String {
    format!(
        "file {} B, data {} B, records {} (put {}, delete {}, expire {}, batch {}); live {} B ({} keys), \
         expired {} B ({} keys), dead {} B, tombstones {} B; reclaimable now {} B; space amplification {}{}",
        s.file_bytes,
        s.data_bytes,
        s.records.total(),
        s.records.put,
        s.records.delete,
        s.records.expire,
        s.records.batch,
        s.live_bytes,
        s.live_keys,
        s.expired_bytes,
        s.expired_keys,
        s.dead_bytes,
        s.tombstone_bytes,
        s.reclaimable_bytes,
        amp_text(s),
        if s.torn_tail_bytes > 0 {
            format!("; torn tail {} B", s.torn_tail_bytes)
        } else {
            String::new()
        }
    )
}

fn histogram_json(h: &ExpiryHistogram) -> Json {
    let b = |b: &inspect::Bucket| json!({"keys": b.keys, "bytes": b.bytes});
    json!({
        "within_minute": b(&h.within_minute),
        "within_hour": b(&h.within_hour),
        "within_day": b(&h.within_day),
        "later": b(&h.later),
        "never": b(&h.never),
    })
}

fn space_json(s: &SpaceStats) -> Json {
    json!({
        "file_bytes": s.file_bytes,
        "data_bytes": s.data_bytes,
        "header_bytes": s.header_bytes,
        "torn_tail_bytes": s.torn_tail_bytes,
        "records": {
            "put": s.records.put,
            "delete": s.records.delete,
            "expire": s.records.expire,
            "batch": s.records.batch,
            "total": s.records.total(),
        },
        "live_bytes": s.live_bytes,
        "live_keys": s.live_keys,
        "expired_bytes": s.expired_bytes,
        "expired_keys": s.expired_keys,
        "dead_bytes": s.dead_bytes,
        "tombstone_bytes": s.tombstone_bytes,
        "reclaimable_bytes": s.reclaimable_bytes,
        "space_amplification": s.space_amplification(),
        "expiry": histogram_json(&s.expiry),
    })
}

fn print_stats(r: &StatsReport, json: bool, out: &mut impl Write) -> io::Result<()> {
    if json {
        let doc = json!({
            "at_ms": r.at_ms,
            "at": time::rfc3339(r.at_ms),
            "segments": r.segments.iter().map(|s| {
                let mut v = space_json(&s.space);
                v["id"] = json!(s.id);
                v["active"] = json!(s.last);
                v
            }).collect::<Vec<_>>(),
            "total": space_json(&r.total),
            "namespaces": r.namespaces.iter().map(|n| json!({
                "namespace": inspect::namespace_label(n.namespace),
                "namespace_id": n.namespace.id(),
                "live_keys": n.live_keys,
                "live_bytes": n.live_bytes,
                "groups": n.groups.iter().map(|g| json!({"name": g.name, "len": g.len})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        return writeln!(out, "{doc}");
    }
    writeln!(out, "evaluated at {}", time::rfc3339(r.at_ms))?;
    for s in &r.segments {
        let state = if s.last {
            "last, active if open"
        } else {
            "sealed"
        };
        writeln!(out, "segment {} ({state}): {}", s.id, space_line(&s.space))?;
    }
    writeln!(out, "total: {}", space_line(&r.total))?;
    let h = &r.total.expiry;
    writeln!(out, "live keys expiring:")?;
    for (label, b) in [
        ("within a minute", &h.within_minute),
        ("within an hour", &h.within_hour),
        ("within a day", &h.within_day),
        ("later", &h.later),
        ("never", &h.never),
    ] {
        writeln!(out, "  {label:<16} {:>10} keys {:>14} B", b.keys, b.bytes)?;
    }
    writeln!(out, "namespaces:")?;
    if r.namespaces.is_empty() {
        writeln!(out, "  (no live keys)")?;
    }
    for n in &r.namespaces {
        writeln!(
            out,
            "  {:<16} {:>10} keys {:>14} B",
            inspect::namespace_label(n.namespace),
            n.live_keys,
            n.live_bytes
        )?;
        for g in &n.groups {
            let unit = if n.namespace == Namespace::THREADS {
                "messages"
            } else {
                "tasks"
            };
            writeln!(out, "    {}: {} {unit}", g.name, g.len)?;
        }
    }
    Ok(())
}

fn print_get(
    ns: Namespace,
    key: &[u8],
    found: &Lookup,
    at_ms: u64,
    json: bool,
    out: &mut impl Write,
) -> io::Result<()> {
    let name = format!("{} in {}", key_text(ns, key), inspect::namespace_label(ns));
    if json {
        let mut doc = json!({
            "namespace": inspect::namespace_label(ns),
            "key": inspect::escape_bytes(key),
            "at_ms": at_ms,
        });
        match found {
            Lookup::Live(f) | Lookup::Expired(f) => {
                doc["state"] = json!(if matches!(found, Lookup::Live(_)) {
                    "live"
                } else {
                    "expired"
                });
                doc["value"] = json!(inspect::escape_bytes(&f.value));
                doc["value_len"] = json!(f.value.len());
                doc["value_description"] = json!(inspect::value_description(ns, key, &f.value));
                doc["seq"] = json!(f.seq);
                doc["segment"] = json!(f.segment);
                doc["offset"] = json!(f.offset);
                doc["expires"] = expiry_json(f.expires_at, at_ms);
            }
            Lookup::Removed {
                seq,
                kind,
                segment,
                offset,
            } => {
                doc["state"] = json!("removed");
                doc["removed_by"] = json!(kind.name());
                doc["seq"] = json!(seq);
                doc["segment"] = json!(segment);
                doc["offset"] = json!(offset);
            }
            Lookup::Missing => doc["state"] = json!("missing"),
        }
        return writeln!(out, "{doc}");
    }
    match found {
        Lookup::Live(f) => {
            writeln!(out, "{name}: live")?;
            writeln!(
                out,
                "value ({} bytes): \"{}\"",
                f.value.len(),
                inspect::escape_bytes(&f.value)
            )?;
            if let Some(d) = inspect::value_description(ns, key, &f.value) {
                writeln!(out, "meaning: {d}")?;
            }
            writeln!(out, "expires: {}", expiry_text(f.expires_at, at_ms))?;
            writeln!(
                out,
                "written by seq {} (segment {}, offset {})",
                f.seq, f.segment, f.offset
            )
        }
        Lookup::Expired(f) => {
            writeln!(out, "{name}: expired")?;
            writeln!(out, "expires: {}", expiry_text(f.expires_at, at_ms))?;
            writeln!(
                out,
                "last value ({} bytes): \"{}\"",
                f.value.len(),
                inspect::escape_bytes(&f.value)
            )?;
            if let Some(d) = inspect::value_description(ns, key, &f.value) {
                writeln!(out, "meaning: {d}")?;
            }
            writeln!(
                out,
                "written by seq {} (segment {}, offset {})",
                f.seq, f.segment, f.offset
            )
        }
        Lookup::Removed {
            seq,
            kind,
            segment,
            offset,
        } => {
            writeln!(
                out,
                "{name}: removed by {kind} seq {seq} (segment {segment}, offset {offset})"
            )
        }
        Lookup::Missing => writeln!(out, "{name}: not found"),
    }
}
