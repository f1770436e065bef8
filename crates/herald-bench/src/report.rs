//! The report of `fanout` and `unicast`: the run's parameters, then the
//! deliveries, losses, timing and latency summed over its subscribers.
//!
//! Both subcommands measure the same thing (subscribers counting what they get
//! against what was acknowledged, see [`crate::tracker`]); only how events are
//! addressed differs, so one [`DeliveryRunReport`] serves both, with the
//! figures only unicast has left out of fanout's JSON.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use crate::publisher::Refusals;
use crate::subs::StopReason;
use crate::tracker::{AckSet, SeqTracker};
use crate::{per_sec, round3, Latency};

/// The figures of one fanout or unicast run (`--json` prints this).
///
/// `bench/compare` and `bench/compare_table.py` read its fields by name;
/// they are in the order the two subcommands always printed them.
#[derive(Debug, Serialize)]
pub(crate) struct DeliveryRunReport {
    /// Herald's own subscribe route and publish body were used.
    pub server_api: bool,
    pub subscribe_url: String,
    /// The streams went over TLS.
    pub tls: bool,
    /// `subscribers` (fanout) or `users` (unicast): how many were asked for.
    #[serde(flatten)]
    pub population: Population,
    pub connected: usize,
    pub failed: usize,
    /// Streams that opened only after a retry.
    pub retried_opens: usize,
    pub events: u32,
    /// Events acknowledged (2xx) by the server.
    pub published: u64,
    /// Publisher tasks, each with its own connection and one request in
    /// flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publishers: Option<usize>,
    pub batch: u32,
    pub rate: Option<f64>,
    /// Seed of the RNG that picked each event's user; unicast only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub data_bytes: usize,
    /// What the subscribers got, flattened so that the JSON keeps these
    /// fields at the top level.
    #[serde(flatten)]
    pub delivery: DeliveryReport,
}

/// Who subscribed, by the name the report gives them.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) enum Population {
    /// Fanout: subscribers of one topic.
    #[serde(rename = "subscribers")]
    Subscribers(usize),
    /// Unicast: users, one personal stream each.
    #[serde(rename = "users")]
    Users(usize),
}

impl DeliveryRunReport {
    /// The table.
    pub(crate) fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        // `unexpected` means a different thing to each: past `--events`, or
        // addressed to another user.
        let (label, asked, unexpected) = match self.population {
            Population::Subscribers(n) => ("subscribers", n, "unexpected events"),
            Population::Users(n) => ("users", n, "to the wrong user"),
        };
        let over = if self.tls { ", over TLS" } else { "" };
        writeln!(
            out,
            "{label:<25}{asked} ({} open, {} failed, {} retried{over})",
            self.connected, self.failed, self.retried_opens
        )?;
        let rate = self
            .rate
            .map_or("flat out".to_owned(), |r| format!("{r} events/s"));
        let by = self
            .publishers
            .map_or(String::new(), |p| format!(" by {p} publishers"));
        let seed = self.seed.map_or(String::new(), |s| format!(", seed {s}"));
        writeln!(
            out,
            "events                   {} published of {}{by}, batch {}, {rate}{seed}",
            self.published, self.events, self.batch
        )?;
        self.delivery.write_table(out, unexpected)
    }
}

/// Deliveries, losses, timing and latency of one run: top-level fields of
/// the `--json` object (`bench/compare` and `bench/compare_table.py` read
/// `deliveries_per_sec`, `missing`, `latency_ms`, `delivery_window_secs`…).
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
    /// Deliveries due but not yet received when the last publish was
    /// acknowledged.
    pub outstanding_at_last_ack: u64,
    /// `--backlog-after-secs`, when given.
    pub backlog_after_secs: Option<f64>,
    /// Deliveries still outstanding `backlog_after_secs` after the last
    /// acknowledgement; `None` when not measured (no flag, or the run ended
    /// first with deliveries still missing).
    pub outstanding_after: Option<u64>,
    /// Last acknowledgement to last receive, seconds (0 when everything
    /// arrived before the last acknowledgement).
    pub drain_secs: f64,
    /// Publish answers `429`/`503`, by status and error code (`"503
    /// overloaded"`; the status alone when the body is not a JSON error).
    /// Each was retried after its `Retry-After`.
    pub publish_refused: BTreeMap<String, u64>,
    /// Seconds publishers waited before retrying refused publishes, summed.
    pub publish_retry_wait_secs: f64,
}

/// The backlog figures of one run, see [`DeliveryReport`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backlog {
    pub outstanding_at_last_ack: u64,
    pub after_secs: Option<f64>,
    pub outstanding_after: Option<u64>,
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
            outstanding_at_last_ack: 0,
            backlog_after_secs: None,
            outstanding_after: None,
            drain_secs: 0.0,
            publish_refused: BTreeMap::new(),
            publish_retry_wait_secs: 0.0,
        }
    }

    /// The backlog figures.
    pub(crate) fn set_backlog(&mut self, backlog: Backlog) {
        self.outstanding_at_last_ack = backlog.outstanding_at_last_ack;
        self.backlog_after_secs = backlog.after_secs;
        self.outstanding_after = backlog.outstanding_after;
    }

    /// The refused publishes.
    pub(crate) fn set_refusals(&mut self, refusals: &Refusals) {
        self.publish_refused = refusals.by_cause();
        self.publish_retry_wait_secs = round3(refusals.waited_secs());
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
        self.drain_secs = round3(last_receive_us.saturating_sub(publish_end_us) as f64 / 1e6);
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
        let after = match (self.backlog_after_secs, self.outstanding_after) {
            (Some(secs), Some(n)) => format!(", {n} at +{secs} s"),
            (Some(secs), None) => format!(", not measured at +{secs} s (the run ended first)"),
            (None, _) => String::new(),
        };
        writeln!(
            out,
            "backlog                  {} outstanding at the last ack{after}; drained {:.3} s after it",
            self.outstanding_at_last_ack, self.drain_secs
        )?;
        if !self.publish_refused.is_empty() {
            let causes: Vec<String> = self
                .publish_refused
                .iter()
                .map(|(cause, n)| format!("{n} × {cause}"))
                .collect();
            writeln!(
                out,
                "publishes refused        {} (retried after waiting {:.1} s in all)",
                causes.join(", "),
                self.publish_retry_wait_secs
            )?;
        }
        if let Some(err) = &self.publish_error {
            writeln!(out, "publish error            {err}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

    use super::*;
    use crate::new_histogram;

    fn report(population: Population, unicast: bool) -> anyhow::Result<DeliveryRunReport> {
        let mut delivery = DeliveryReport::new(
            StopReason::Complete,
            Latency::of(&new_histogram()?),
            None,
            None,
        );
        delivery.users = unicast.then(UsersAffected::default);
        Ok(DeliveryRunReport {
            server_api: true,
            subscribe_url: "{url}/v1/events?topic={topic}".into(),
            tls: false,
            population,
            connected: 2,
            failed: 0,
            retried_opens: 0,
            events: 10,
            published: 10,
            publishers: Some(if unicast { 4 } else { 1 }),
            batch: 1,
            rate: None,
            seed: unicast.then_some(1),
            data_bytes: 100,
            delivery,
        })
    }

    /// The keys of a JSON object, in the order they were written.
    struct Keys(Vec<String>);

    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct KeysVisitor;
            impl<'de> Visitor<'de> for KeysVisitor {
                type Value = Keys;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            deserializer.deserialize_map(KeysVisitor)
        }
    }

    fn keys(report: &DeliveryRunReport) -> anyhow::Result<Vec<String>> {
        let json = serde_json::to_string(report)?;
        Ok(serde_json::from_str::<Keys>(&json)?.0)
    }

    /// `head`, then the delivery figures with `users` among them: the keys
    /// of a subcommand's `--json` object in the order they always had.
    fn expected_keys(head: &[&str], users: &[&str]) -> Vec<String> {
        let counts = [
            "expected",
            "received",
            "unique",
            "missing",
            "duplicates",
            "out_of_order",
            "unexpected",
            "other_events",
        ];
        let rest = [
            "disconnected",
            "stop_reason",
            "timed_out",
            "publish_secs",
            "publish_events_per_sec",
            "delivery_window_secs",
            "deliveries_per_sec",
            "latency_ms",
            "publish_error",
            "first_subscriber_error",
            "outstanding_at_last_ack",
            "backlog_after_secs",
            "outstanding_after",
            "drain_secs",
            "publish_refused",
            "publish_retry_wait_secs",
        ];
        head.iter()
            .chain(&counts)
            .chain(users)
            .chain(&rest)
            .map(|key| (*key).to_owned())
            .collect()
    }

    #[test]
    fn fanout_json_keys_in_their_order() -> anyhow::Result<()> {
        let head = [
            "server_api",
            "subscribe_url",
            "tls",
            "subscribers",
            "connected",
            "failed",
            "retried_opens",
            "events",
            "published",
            "publishers",
            "batch",
            "rate",
            "data_bytes",
        ];
        let report = report(Population::Subscribers(2), false)?;
        assert_eq!(keys(&report)?, expected_keys(&head, &[]));
        Ok(())
    }

    #[test]
    fn unicast_json_keys_in_their_order() -> anyhow::Result<()> {
        let head = [
            "server_api",
            "subscribe_url",
            "tls",
            "users",
            "connected",
            "failed",
            "retried_opens",
            "events",
            "published",
            "publishers",
            "batch",
            "rate",
            "seed",
            "data_bytes",
        ];
        let users = ["users_missing", "users_duplicates", "users_out_of_order"];
        let report = report(Population::Users(2), true)?;
        assert_eq!(keys(&report)?, expected_keys(&head, &users));
        Ok(())
    }
}
