//! The figures `fanout` and `unicast` share: deliveries, losses, timing and
//! latency, summed over the subscribers of one run.
//!
//! Both subcommands measure the same thing (subscribers counting what they get
//! against what was acknowledged, see [`crate::tracker`]); only their setup
//! and how events are addressed differ. Their reports embed one
//! [`DeliveryReport`] so the accounting and the table lines are written once.

use std::io::{self, Write};

use serde::Serialize;

use crate::subs::StopReason;
use crate::tracker::{AckSet, SeqTracker};
use crate::{per_sec, round3, Latency};

/// Deliveries, losses, timing and latency of one run.
///
/// Embedded in each subcommand's report with `#[serde(flatten)]`: these stay
/// top-level fields of the `--json` object, by the same names and in the same
/// order as before they were shared (`bench/compare` and
/// `bench/compare_table.py` read `deliveries_per_sec`, `missing`,
/// `latency_ms`, `delivery_window_secs`… there).
#[derive(Debug, Serialize)]
pub(crate) struct DeliveryReport {
    /// Acknowledged events × the open subscribers they are addressed to.
    pub expected: u64,
    /// Bench events received by all subscribers, duplicates and strays included.
    pub received: u64,
    /// Distinct expected deliveries.
    pub unique: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Per subscriber: deliveries that arrived after a later-published one.
    pub out_of_order: u64,
    /// Bench events a subscriber did not expect: past `--events` (fanout), or
    /// addressed to another user (unicast).
    pub unexpected: u64,
    pub other_events: u64,
    /// How many users each fault touched; unicast only (every fanout
    /// subscriber expects the same events, so there it says nothing more).
    /// Absent from the JSON when `None`.
    #[serde(flatten)]
    pub users: Option<UsersAffected>,
    /// Streams the server ended (or that failed) before the run ended.
    pub disconnected: u64,
    pub stop_reason: StopReason,
    pub timed_out: bool,
    /// First publish to last acknowledgement.
    pub publish_secs: f64,
    pub publish_events_per_sec: f64,
    /// From the first publish to the last receive.
    pub delivery_window_secs: f64,
    /// `unique / delivery_window_secs`.
    pub deliveries_per_sec: f64,
    pub latency_ms: Latency,
    pub publish_error: Option<String>,
    pub first_subscriber_error: Option<String>,
}

/// Users with at least one event missing, duplicated or out of order.
#[derive(Debug, Default, Serialize)]
pub(crate) struct UsersAffected {
    #[serde(rename = "users_missing")]
    pub missing: u64,
    #[serde(rename = "users_duplicates")]
    pub duplicates: u64,
    #[serde(rename = "users_out_of_order")]
    pub out_of_order: u64,
}

impl DeliveryReport {
    /// All counts and times at zero, to be filled by [`Self::add`] and
    /// [`Self::set_times`]; `users` is `None` (unicast sets it).
    pub(crate) fn new(
        stop_reason: StopReason,
        latency_ms: Latency,
        publish_error: Option<String>,
        first_subscriber_error: Option<String>,
    ) -> Self {
        Self {
            expected: 0,
            received: 0,
            unique: 0,
            missing: 0,
            duplicates: 0,
            out_of_order: 0,
            unexpected: 0,
            other_events: 0,
            users: None,
            disconnected: 0,
            stop_reason,
            timed_out: stop_reason == StopReason::Timeout,
            publish_secs: 0.0,
            publish_events_per_sec: 0.0,
            delivery_window_secs: 0.0,
            deliveries_per_sec: 0.0,
            latency_ms,
            publish_error,
            first_subscriber_error,
        }
    }

    /// Adds what one subscriber saw; returns the deliveries it expected.
    pub(crate) fn add(&mut self, tracker: &SeqTracker, acked: &AckSet) -> u64 {
        let (expected, missing) = tracker.missing(acked);
        let r = tracker.result;
        self.expected += expected;
        self.missing += missing;
        self.received += r.received;
        self.unique += r.unique;
        self.duplicates += r.duplicates;
        self.out_of_order += r.out_of_order;
        self.unexpected += r.unexpected;
        self.other_events += r.other;
        if let Some(users) = &mut self.users {
            users.missing += u64::from(missing > 0);
            users.duplicates += u64::from(r.duplicates > 0);
            users.out_of_order += u64::from(r.out_of_order > 0);
        }
        self.disconnected += u64::from(r.disconnected);
        expected
    }

    /// The times and rates, from the run's clock (µs since its start); call
    /// once every subscriber has been added (`deliveries_per_sec` uses
    /// `unique`).
    pub(crate) fn set_times(
        &mut self,
        published: u64,
        first_publish_us: u64,
        publish_end_us: u64,
        last_receive_us: u64,
    ) {
        let publish_secs = publish_end_us.saturating_sub(first_publish_us) as f64 / 1e6;
        let window_secs = last_receive_us.saturating_sub(first_publish_us) as f64 / 1e6;
        self.publish_secs = round3(publish_secs);
        self.publish_events_per_sec = per_sec(published, publish_secs);
        self.delivery_window_secs = round3(window_secs);
        self.deliveries_per_sec = per_sec(self.unique, window_secs);
    }

    /// The table lines from `publish time` on. `unexpected` names the line of
    /// [`Self::unexpected`], whose meaning differs between subcommands.
    pub(crate) fn write_table(&self, out: &mut dyn Write, unexpected: &str) -> io::Result<()> {
        writeln!(
            out,
            "publish time             {:.3} s ({:.0} events/s)",
            self.publish_secs, self.publish_events_per_sec
        )?;
        writeln!(
            out,
            "deliveries               {} of {} expected in {:.3} s",
            self.unique, self.expected, self.delivery_window_secs
        )?;
        writeln!(
            out,
            "deliveries/s             {:.0}",
            self.deliveries_per_sec
        )?;
        // Unicast adds how many users each fault touched.
        let users = |n: fn(&UsersAffected) -> u64| {
            self.users
                .as_ref()
                .map_or(String::new(), |u| format!(" ({} users)", n(u)))
        };
        writeln!(
            out,
            "missing                  {}{}",
            self.missing,
            users(|u| u.missing)
        )?;
        writeln!(
            out,
            "duplicates               {}{}",
            self.duplicates,
            users(|u| u.duplicates)
        )?;
        writeln!(
            out,
            "out of order             {}{}",
            self.out_of_order,
            users(|u| u.out_of_order)
        )?;
        writeln!(out, "{unexpected:<25}{}", self.unexpected)?;
        writeln!(out, "other events             {}", self.other_events)?;
        writeln!(out, "streams ended early      {}", self.disconnected)?;
        writeln!(out, "stopped because          {:?}", self.stop_reason)?;
        writeln!(out, "latency ms               {}", self.latency_ms.line())?;
        if let Some(err) = &self.publish_error {
            writeln!(out, "publish error            {err}")?;
        }
        Ok(())
    }
}
