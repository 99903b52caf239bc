//! Request counters per (route template, method, status), for tests and benchmarks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The status recorded when the emulator closed the connection instead of answering.
pub const NO_ANSWER: u16 = 0;

/// One counter row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CounterKey {
    pub route: String,
    pub method: String,
    /// The HTTP status sent, or [`NO_ANSWER`] (0) when the connection was dropped.
    pub status: u16,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<CounterKey, u64>);

impl Counters {
    pub(crate) fn record(&mut self, route: &str, method: &str, status: u16) {
        let key = CounterKey {
            route: route.to_owned(),
            method: method.to_owned(),
            status,
        };
        *self.0.entry(key).or_default() += 1;
    }

    /// Requests to this route and method, whatever their status.
    pub fn count(&self, method: &str, route: &str) -> u64 {
        self.matching(|k| k.method == method && k.route == route)
    }

    /// Requests to this route and method that got this status (0 = no answer).
    pub fn count_status(&self, method: &str, route: &str, status: u16) -> u64 {
        self.matching(|k| k.method == method && k.route == route && k.status == status)
    }

    /// Requests that got this status, on any route.
    pub fn with_status(&self, status: u16) -> u64 {
        self.matching(|k| k.status == status)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    fn matching(&self, keep: impl Fn(&CounterKey) -> bool) -> u64 {
        self.0.iter().filter(|(k, _)| keep(k)).map(|(_, n)| n).sum()
    }

    /// Rows as a JSON-friendly list.
    pub fn rows(&self) -> Vec<CounterRow> {
        self.0
            .iter()
            .map(|(k, n)| CounterRow {
                route: k.route.clone(),
                method: k.method.clone(),
                status: k.status,
                count: *n,
            })
            .collect()
    }
}

/// A counter as `/_emulator/counters` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRow {
    pub route: String,
    pub method: String,
    pub status: u16,
    pub count: u64,
}

/// One request as the emulator saw it, for tests that check what was sent and when.
#[derive(Debug, Clone, Serialize)]
pub struct JournalEntry {
    /// When the request arrived.
    #[serde(skip)]
    pub at: std::time::Instant,
    pub method: String,
    pub route: String,
    pub path: String,
    /// The status answered; [`NO_ANSWER`] when the connection was dropped.
    pub status: u16,
    /// The JSON body of a POST or PATCH, when it was JSON.
    pub body: Option<serde_json::Value>,
}

/// The most recent requests, oldest first (bounded, so a long benchmark cannot grow it forever).
#[derive(Debug, Default)]
pub struct Journal(std::collections::VecDeque<JournalEntry>);

impl Journal {
    const CAPACITY: usize = 10_000;

    pub fn push(&mut self, entry: JournalEntry) {
        if self.0.len() == Self::CAPACITY {
            self.0.pop_front();
        }
        self.0.push_back(entry);
    }

    pub fn entries(&self) -> Vec<JournalEntry> {
        self.0.iter().cloned().collect()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}
