//! Webhook delivery: the worker that turns the event log into signed POSTs to the admins'
//! endpoints, following Standard Webhooks 1.0 — `webhook-id` (the event's id, the same on
//! every retry), `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,` + base64
//! HMAC-SHA256 of `id.timestamp.body` with the endpoint's `whsec_` secret; during a rotation
//! one signature per secret, space-separated). Signing is the `standardwebhooks` crate's.
//!
//! At least once: a 2xx is delivered; any other answer, or none within the timeout, is tried
//! again on [`WebhookSettings::retry_schedule`] (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h,
//! 14 h, 24 h, 24 h — eleven attempts over about 3.7 days, each wait ±10%); `410 Gone`
//! disables the endpoint. Endpoints reach only public addresses unless allowed
//! ([`PublicOnly`] refuses the others where the connection is made, after resolving).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mailbridge_core::Clock;
use mailbridge_core::webhook::is_public;
use mailbridge_store::{Attempt, DeliveryJob, Store, Verdict};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use secrecy::ExposeSecret;
use tokio::sync::watch;

/// How webhooks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The wait before each retry; its length is the number of retries.
    pub retry_schedule: Vec<Duration>,
    /// No answer within this is a failed attempt.
    pub timeout: Duration,
    /// Deliver to private, loopback and link-local addresses too (for an application on the
    /// same network, and for tests). Off by default: a webhook must not probe the network
    /// Mailbridge runs in.
    pub allow_private: bool,
    /// Deliveries sent at once by this node.
    pub concurrency: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Self {
            retry_schedule: vec![
                Duration::from_secs(5),
                m(5),
                m(30),
                m(2 * 60),
                m(5 * 60),
                m(10 * 60),
                m(10 * 60),
                m(14 * 60),
                m(24 * 60),
                m(24 * 60),
            ],
            timeout: Duration::from_secs(10),
            allow_private: false,
            concurrency: 16,
        }
    }
}

/// Longest excerpt of an answer kept with an attempt.
const EXCERPT_CHARS: usize = 300;
/// Most of an answer's body read.
const MAX_ANSWER_BYTES: usize = 8 * 1024;
/// Deliveries claimed per round. A round is one write (see `Store::webhook_round`), which on
/// SQLite gives way to a sync's batches for up to a quarter of a second: many deliveries a
/// round keep up with a sync that never pauses (measured with `bench/webhooks`: 32 a round,
/// three writes each, cost a first sync 15% of its speed, mostly waiting for the write
/// lock; 128 in one write, giving way, 6–13%).
const CLAIM: i64 = 128;

/// A resolver that gives only public addresses: a name that resolves only to private,
/// loopback or link-local addresses fails, before any packet is sent to it. Where the
/// connection is made, so a name that resolved to a public address when the webhook was
/// registered and to an internal one now (DNS rebinding) is still refused.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves only to private or local addresses, which webhooks may not reach (see the webhook_allow_private_addresses setting)"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Sends deliveries: one HTTP client (no redirects followed: a redirect could point inside
/// the network) and the settings.
pub struct Deliverer {
    http: reqwest::Client,
    settings: WebhookSettings,
}

impl Deliverer {
    pub fn new(settings: WebhookSettings) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .user_agent(concat!("Mailbridge-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !settings.allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Self {
            http: builder.build()?,
            settings,
        })
    }

    /// Makes one attempt: signs, POSTs, and judges the answer.
    pub async fn deliver(&self, job: &DeliveryJob, clock: &dyn Clock) -> (Attempt, Verdict) {
        let at = clock.now();
        let started = Instant::now();
        let outcome = self.post(job, at.timestamp()).await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (status_code, error, excerpt) = match outcome {
            Ok((status, body)) => (
                Some(status),
                None,
                Some(excerpt(&body)).filter(|e| !e.is_empty()),
            ),
            Err(error) => (None, Some(error), None),
        };
        let verdict = match status_code {
            Some(s) if (200..300).contains(&s) => Verdict::Delivered,
            Some(410) => Verdict::Gone,
            _ => self.retry(job, at),
        };
        (
            Attempt {
                at,
                duration_ms,
                status_code,
                error,
                excerpt,
            },
            verdict,
        )
    }

    /// The next try after attempt `job.attempt` failed, or `Failed` when the schedule is
    /// spent.
    fn retry(&self, job: &DeliveryJob, now: chrono::DateTime<chrono::Utc>) -> Verdict {
        let n = usize::try_from(job.attempt.max(1) - 1).unwrap_or(usize::MAX);
        match self.settings.retry_schedule.get(n) {
            Some(wait) => {
                // ±10%, so deliveries that failed together do not all come back at once.
                let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.9..1.1);
                let wait = wait.mul_f64(jitter);
                Verdict::Retry(now + chrono::Duration::from_std(wait).unwrap_or_default())
            }
            None => Verdict::Failed,
        }
    }

    async fn post(&self, job: &DeliveryJob, timestamp: i64) -> Result<(u16, String), String> {
        let url: reqwest::Url = job.url.parse().map_err(|e| format!("not a URL: {e}"))?;
        if !self.settings.allow_private
            && let Some(ip) = literal_ip(&url)
            && !is_public(ip)
        {
            // An address written into the URL is never resolved: checked here instead.
            return Err(format!(
                "{ip} is a private or local address, which webhooks may not reach (see the webhook_allow_private_addresses setting)"
            ));
        }
        let signatures = job
            .secrets
            .iter()
            .map(|secret| {
                standardwebhooks::Webhook::new(secret.expose_secret())
                    .and_then(|w| w.sign(&job.event_id, timestamp, job.payload.as_bytes()))
                    .map_err(|e| format!("cannot sign the delivery: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &job.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(job.payload.clone())
            .send()
            .await
            .map_err(|e| describe(&e, self.settings.timeout))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut response = response;
        while body.len() < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Delivers webhooks until shutdown: makes deliveries from the event log, claims the due
/// ones, sends them a few at a time, records each attempt. Wakes at once when this node
/// commits events, and at least every second (retries due, other nodes' events).
pub(crate) async fn run(
    store: Store,
    deliverer: Deliverer,
    clock: Arc<dyn Clock>,
    node: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut news = store.event_signal();
    let hold = claim_hold(&deliverer.settings);
    let mut results: Vec<(DeliveryJob, Attempt, Verdict)> = Vec::new();
    loop {
        news.borrow_and_update();
        // Records the last round's attempts, makes deliveries of new events and claims the
        // next round's, in one transaction.
        let claimed = match store.webhook_round(&node, &results, CLAIM, hold).await {
            Ok(round) => round.jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record, make or claim webhook deliveries; the attempts are made again once their claims run out");
                Vec::new()
            }
        };
        let busy = !claimed.is_empty();
        results = futures::stream::iter(claimed)
            .map(|job| {
                let (deliverer, clock) = (&deliverer, &clock);
                async move {
                    let (attempt, verdict) = deliverer.deliver(&job, clock.as_ref()).await;
                    if verdict != Verdict::Delivered {
                        tracing::info!(webhook = %job.endpoint_id, delivery = %job.id, attempt = job.attempt, status = ?attempt.status_code, error = ?attempt.error, ?verdict, "webhook delivery failed");
                    }
                    (job, attempt, verdict)
                }
            })
            .buffer_unordered(deliverer.settings.concurrency)
            .collect()
            .await;
        if busy {
            // Record what was sent at once (and claim more), whether or not more is due.
            continue;
        }
        tokio::select! {
            _ = news.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// How long a round's claims last: a round sends its [`CLAIM`] deliveries `concurrency` at a
/// time and records them when the last is done, so the claims outlast that many attempts
/// that each time out, and a little more. A node that dies holding claims delays those
/// deliveries by no more than this.
fn claim_hold(settings: &WebhookSettings) -> Duration {
    let concurrency = u32::try_from(settings.concurrency.max(1)).unwrap_or(u32::MAX);
    let waves = u32::try_from(CLAIM)
        .unwrap_or(u32::MAX)
        .div_ceil(concurrency);
    settings.timeout * waves + (settings.timeout / 2).max(Duration::from_secs(2))
}

/// The address written into a URL's host, if it is one.
fn literal_ip(url: &reqwest::Url) -> Option<std::net::IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(ip.into()),
        url::Host::Ipv6(ip) => Some(ip.into()),
        url::Host::Domain(_) => None,
    }
}

/// A request error in words: a timeout, a refused connection, a refused address.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {:.1} s", timeout.as_secs_f64());
    }
    let mut words = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        words = format!("{words}: {s}");
        source = s.source();
    }
    words
}

/// The start of an answer, on one line.
fn excerpt(body: &str) -> String {
    body.chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_retries_for_more_than_three_days() {
        let total: Duration = WebhookSettings::default().retry_schedule.iter().sum();
        assert!(total > Duration::from_secs(3 * 24 * 3600), "{total:?}");
        // With the -10% jitter at every wait, still past three days.
        assert!(total.mul_f64(0.9) > Duration::from_secs(3 * 24 * 3600));
    }

    #[test]
    fn claims_outlast_a_round_of_timeouts() {
        let settings = WebhookSettings::default();
        let waves = CLAIM as u32 / settings.concurrency as u32;
        assert!(claim_hold(&settings) > settings.timeout * waves);
        let one_at_a_time = WebhookSettings {
            concurrency: 1,
            ..WebhookSettings::default()
        };
        assert!(claim_hold(&one_at_a_time) > one_at_a_time.timeout * CLAIM as u32);
    }

    #[tokio::test]
    async fn names_of_local_addresses_are_refused_without_connecting() {
        let refused = PublicOnly.resolve("localhost".parse().unwrap()).await;
        let e = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("private or local"), "{e}");
    }
}
