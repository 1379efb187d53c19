//! [`WebhookReceiver`]: `webhook-receiver/server.mjs` under Node — receivers that check every
//! delivery with the official Standard Webhooks verifier (npm `standardwebhooks`) and answer
//! as a test asks: at once, failing N times first, never (a timeout), or 410 Gone.

use serde_json::{Value, json};

use crate::node::NodeService;

pub struct WebhookReceiver {
    node: NodeService,
    http: reqwest::Client,
}

/// How a receiver answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 204 at once.
    Ok,
    /// `status` for the first `times` deliveries, then 204.
    FailThenOk { times: u32, status: u16 },
    /// Never answers.
    Timeout,
    /// 410 Gone.
    Gone,
    /// Never answers the first delivery; 204 to the others.
    HangFirst,
}

impl WebhookReceiver {
    pub fn start() -> anyhow::Result<Self> {
        Ok(Self {
            node: NodeService::start(
                "webhook-receiver",
                "standardwebhooks",
                "test webhook receiver",
            )?,
            http: reqwest::Client::new(),
        })
    }

    /// Sets up receiver `name`, which verifies with any of `secrets`: its URL.
    pub async fn receiver(
        &self,
        name: &str,
        secrets: &[&str],
        answer: Answer,
    ) -> anyhow::Result<String> {
        let mode = match answer {
            Answer::Ok => json!({"kind": "ok"}),
            Answer::FailThenOk { times, status } => {
                json!({"kind": "fail_then_ok", "times": times, "status": status})
            }
            Answer::Timeout => json!({"kind": "timeout"}),
            Answer::Gone => json!({"kind": "gone"}),
            Answer::HangFirst => json!({"kind": "hang_first"}),
        };
        self.http
            .post(format!("{}/control/receivers", self.node.url))
            .json(&json!({"name": name, "secrets": secrets, "mode": mode}))
            .send()
            .await?
            .error_for_status()?;
        Ok(format!("{}/hooks/{name}", self.node.url))
    }

    /// Every delivery receiver `name` got, oldest first: `{id, timestamp, signature,
    /// verified, error, body, received_at (ms), answered}`.
    pub async fn deliveries(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .http
            .get(format!("{}/control/deliveries", self.node.url))
            .query(&[("name", name)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}
