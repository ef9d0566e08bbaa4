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

    /// Empties every queue of the vhost (streams cannot be purged and are left), so that a phase
    /// of a mode does not publish onto the backlog of the phase before it: a quorum queue of
    /// RabbitMQ 3.10 keeps its messages in memory, and the broker slows as it grows.
    ///
    /// # Errors
    /// The management API or the broker failed.
    pub async fn purge_queues(&self) -> anyhow::Result<()> {
        let queues = self.management.queues(BENCH_VHOST).await?;
        let conn = burrow::broker::connect(&self.settings.amqp, "bench purge").await?;
        let channel = conn.create_channel().await?;
        for q in queues.iter().filter(|q| q.kind != "stream") {
            channel
                .queue_purge(q.name.as_str().into(), Default::default())
                .await
                .with_context(|| format!("purging {}", q.name))?;
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }

    /// Deletes the vhost (and so every queue of the mode); a missing vhost is fine.
    ///
    /// # Errors
    /// The management API failed.
    pub async fn delete(&self) -> anyhow::Result<()> {
        Ok(self.management.delete_vhost(BENCH_VHOST).await?)
    }
}
