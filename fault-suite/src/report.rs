//! What a scenario counted, and the tables the suite prints and writes.

use std::fmt::Write as _;
use std::time::Duration;

/// The counts of one run. `problems` lists every broken promise (empty: the run passed).
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub scenario: String,
    /// Requests published (persistent, confirmed).
    pub published: u64,
    /// Emails expected: the sum of every request's distinct recipients.
    pub expected: u64,
    pub emails_recorded: u64,
    pub events_recorded: u64,
    /// Received by SMTP and `dispatched` in the history.
    pub delivered: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub set_aside: u64,
    /// Expected − (delivered + failed + suppressed + set aside).
    pub lost: u64,
    /// Distinct `X-Mailtrail-Id`s the SMTP server received.
    pub received_unique: u64,
    /// Messages received beyond the first per `X-Mailtrail-Id`.
    pub duplicates: u64,
    /// `None`: counted, not bounded (slow SMTP).
    pub duplicate_bound: Option<u64>,
    /// Lifecycle or final events recorded more than once for one email.
    pub events_twice: u64,
    pub dead_letters: u64,
    pub dispatcher_kills: u32,
    pub operator_kills: u32,
    /// Fault end → the next message at the SMTP server.
    pub recovery: Option<Duration>,
    /// Fault end → every email final, queues empty, nothing in flight.
    pub drain: Option<Duration>,
    /// Setting up servers and proxies (e.g. a private broker's boot).
    pub setup_time: Duration,
    /// First publish → drained.
    pub run_time: Duration,
    pub notes: Vec<String>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn row(r: &Report) -> [String; 13] {
    [
        r.scenario.clone(),
        r.published.to_string(),
        r.expected.to_string(),
        r.delivered.to_string(),
        format!("{}/{}/{}", r.failed, r.suppressed, r.set_aside),
        format!(
            "{} (≤ {})",
            r.duplicates,
            r.duplicate_bound
                .map_or_else(|| "counted".to_owned(), |b| b.to_string())
        ),
        r.events_twice.to_string(),
        r.dead_letters.to_string(),
        r.lost.to_string(),
        secs(r.recovery),
        secs(r.drain),
        format!("{:.0} s", r.run_time.as_secs_f64()),
        if r.passed() {
            "ok".to_owned()
        } else {
            "FAILED".to_owned()
        },
    ]
}

const HEADER: [&str; 13] = [
    "scenario",
    "requests",
    "expected emails",
    "delivered",
    "failed/suppressed/set aside",
    "SMTP duplicates (bound)",
    "events twice",
    "dead letters",
    "lost",
    "recovery",
    "drained after",
    "run",
    "result",
];

/// A Markdown table of the reports.
pub fn markdown_table(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADER.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADER.len()));
    for r in reports {
        let _ = writeln!(out, "| {} |", row(r).join(" | "));
    }
    out
}

/// A plain-text table (aligned columns) of the reports, with each run's problems under it.
pub fn text_table(reports: &[Report]) -> String {
    let rows: Vec<[String; 13]> = reports.iter().map(row).collect();
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(HEADER.to_vec()));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
    for r in reports {
        for p in &r.problems {
            let _ = writeln!(out, "  {}: {p}", r.scenario);
        }
        for n in &r.notes {
            let _ = writeln!(out, "  {}: {n}", r.scenario);
        }
    }
    out
}
