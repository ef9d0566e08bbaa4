//! The benchmark's own vhost, `burrow-bench`: created through the management API before a mode
//! runs and deleted after it, so every mode starts on fresh quorum queues and nothing of the
//! benchmark is left on the broker (not even when a mode fails).

use anyhow::Context;
use burrow::management::Management;
use burrow::settings::Settings;

/// The vhost every mode runs in.
pub const BENCH_VHOST: &str = "burrow-bench";

/// A vhost that exists while this value lives.
pub struct BenchVhost {
    management: Management,
    /// Settings whose AMQP URL points at the vhost.
    pub settings: Settings,
}

impl BenchVhost {
    /// Deletes any leftover `burrow-bench` (a killed earlier run), creates it afresh and grants
    /// the AMQP user every permission on it.
    ///
    /// # Errors
    /// The management API is unreachable or refuses the login.
    pub async fn create(settings: &Settings) -> anyhow::Result<Self> {
        let management = Management::new(&settings.management, &settings.amqp)?;
        let amqp_user = settings
            .amqp
            .url
            .username()
            .unwrap_or_else(|| "guest".into());
        let mut bench_settings = settings.clone();
        bench_settings.amqp.url = settings.amqp.url.with_vhost(BENCH_VHOST);
        let vhost = Self {
            management,
            settings: bench_settings,
        };
        vhost.delete().await.context(
            "the benchmark makes a vhost of its own through the management API \
             (`rabbitmq-plugins enable rabbitmq_management` turns it on)",
        )?;
        vhost.management.put_vhost(BENCH_VHOST).await?;
        vhost
            .management
            .put_permissions(BENCH_VHOST, &amqp_user, ".*", ".*", ".*")
            .await?;
        Ok(vhost)
    }

    /// Deletes the vhost (and so every queue of the mode); a missing vhost is fine.
    ///
    /// # Errors
    /// The management API failed.
    pub async fn delete(&self) -> anyhow::Result<()> {
        Ok(self.management.delete_vhost(BENCH_VHOST).await?)
    }
}
