//! [`Metrics`]: what the engine counts, exposed in Prometheus' text format at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `transient` or `permanent` for errors; `sent`, `retry` or `failed` for sends.
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    /// Email records stored by incoming sync.
    pub messages_synced: Counter,
    /// Failed sync passes, by kind.
    pub sync_errors: Family<KindLabel, Counter>,
    /// Outgoing attempts, by outcome.
    pub sends: Family<KindLabel, Counter>,
    /// Mail server connections open now.
    pub connections_open: Gauge,
    /// Mailbox leases this node holds now.
    pub leases: Gauge,
    /// When each mailbox this node works last confirmed it was current.
    pub currency: crate::currency::Currency,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mailbridge");
        let messages_synced = Counter::default();
        let sync_errors = Family::<KindLabel, Counter>::default();
        let sends = Family::<KindLabel, Counter>::default();
        let connections_open = Gauge::default();
        let leases = Gauge::default();
        registry.register(
            "messages_synced",
            "Email records stored by incoming sync",
            messages_synced.clone(),
        );
        registry.register(
            "sync_errors",
            "Failed sync passes by kind (transient, permanent)",
            sync_errors.clone(),
        );
        registry.register(
            "sends",
            "Outgoing send attempts by outcome (sent, retry, failed)",
            sends.clone(),
        );
        registry.register(
            "connections_open",
            "Mail server connections open now",
            connections_open.clone(),
        );
        registry.register(
            "leases",
            "Mailbox leases this node holds now (the mailboxes it works)",
            leases.clone(),
        );
        Self {
            registry,
            messages_synced,
            sync_errors,
            sends,
            connections_open,
            leases,
            currency: crate::currency::Currency::default(),
        }
    }
}

impl Metrics {
    /// The text exposition, with this node's sync lag at `now`: seconds since the least
    /// recently confirmed of the mailboxes it works was last known current.
    pub fn render(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        let sync_lag_seconds = self.currency.lag_seconds(now);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        // `# EOF` must stay last; the lag gauge goes before it.
        let body = out.trim_end().trim_end_matches("# EOF").to_owned();
        let mut text = body;
        text.push_str("# HELP mailbridge_sync_lag_seconds Seconds since the least recently confirmed mailbox this node works was last known current (a sync pass without error, new mail or not).\n");
        text.push_str("# TYPE mailbridge_sync_lag_seconds gauge\n");
        text.push_str(&format!(
            "mailbridge_sync_lag_seconds {}\n",
            sync_lag_seconds.unwrap_or(0.0)
        ));
        text.push_str("# EOF\n");
        text
    }

    pub fn error(&self, transient: bool) {
        self.sync_errors
            .get_or_create(&KindLabel {
                kind: if transient { "transient" } else { "permanent" }.to_owned(),
            })
            .inc();
    }

    pub fn send(&self, outcome: &str) {
        self.sends
            .get_or_create(&KindLabel {
                kind: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a connection as open until the returned guard drops.
    pub fn connection(&self) -> ConnectionGuard<'_> {
        self.connections_open.inc();
        ConnectionGuard(&self.connections_open)
    }
}

pub struct ConnectionGuard<'a>(&'a Gauge);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
