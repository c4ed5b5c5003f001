//! The operator's sampled gauges: what waits, and for how long. Every
//! `MAILTRAIL_METRICS_INTERVAL_SECS` the operator reads each queue's depth and consumer count
//! (passive declare: creates nothing) and, from the database, the jobs due in the outbox and the
//! age of the oldest, the scheduled ones, the open dead letters, the events waiting for their
//! email and the status events not yet published. Sampling is best effort: a failed sample is
//! logged and the gauges keep their last values; it never ends the broker session.
//!
//! Counters and histograms are recorded where the work happens (intake, relay, tracking, …);
//! `docs/metrics.md` lists them all.

use crate::db::{DbPool, with_deadline};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double};
use diesel_async::RunQueryDsl;
use lapin::Connection;
use mailtrail_broker::queue_depth;
use mailtrail_shared::topology::{Queue, Topology};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(QueryableByName)]
struct Backlog {
    #[diesel(sql_type = BigInt)]
    due_jobs: i64,
    #[diesel(sql_type = Double)]
    oldest_due_seconds: f64,
    #[diesel(sql_type = BigInt)]
    scheduled_jobs: i64,
    #[diesel(sql_type = BigInt)]
    open_dead_letters: i64,
    #[diesel(sql_type = BigInt)]
    pending_events: i64,
    #[diesel(sql_type = BigInt)]
    unpublished_status_events: i64,
}

/// One query, each part on an index (the outbox's partial pending index, the open dead letters'
/// partial index), so sampling stays cheap on a large history.
const BACKLOG_SQL: &str = "
    SELECT
      (SELECT count(*) FROM outbox WHERE published_at IS NULL AND available_at <= now())
          AS due_jobs,
      coalesce((SELECT extract(epoch FROM now() - min(available_at))::float8 FROM outbox
                 WHERE published_at IS NULL AND available_at <= now()), 0) AS oldest_due_seconds,
      (SELECT count(*) FROM outbox WHERE published_at IS NULL AND available_at > now())
          AS scheduled_jobs,
      (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL AND discarded_at IS NULL)
          AS open_dead_letters,
      (SELECT count(*) FROM pending_events) AS pending_events,
      (SELECT count(*) FROM status_outbox) AS unpublished_status_events";

/// Samples the database gauges once.
pub async fn sample_database(pool: &DbPool, timeout: Duration) -> anyhow::Result<()> {
    let backlog: Backlog = with_deadline(timeout, "metrics sample", async {
        let mut conn = pool.get().await?;
        Ok(diesel::sql_query(BACKLOG_SQL).get_result(&mut conn).await?)
    })
    .await?;
    metrics::gauge!("mailtrail_outbox_due_jobs").set(backlog.due_jobs as f64);
    metrics::gauge!("mailtrail_outbox_oldest_due_seconds").set(backlog.oldest_due_seconds);
    metrics::gauge!("mailtrail_outbox_scheduled_jobs").set(backlog.scheduled_jobs as f64);
    metrics::gauge!("mailtrail_dead_letters_open").set(backlog.open_dead_letters as f64);
    metrics::gauge!("mailtrail_pending_events").set(backlog.pending_events as f64);
    metrics::gauge!("mailtrail_status_events_unpublished")
        .set(backlog.unpublished_status_events as f64);
    Ok(())
}

/// Samples every queue's depth and consumers once, on a channel of its own (a passive declare
/// of a missing queue closes its channel).
pub async fn sample_queues(connection: &Connection, topology: &Topology) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    for queue in Queue::ALL {
        let (messages, consumers) = queue_depth(&channel, &topology.queue(queue)).await?;
        let name = queue.base_name();
        metrics::gauge!("mailtrail_queue_messages", "queue" => name).set(f64::from(messages));
        metrics::gauge!("mailtrail_queue_consumers", "queue" => name).set(f64::from(consumers));
    }
    let _ = channel.close(200, "metrics sampled".into()).await;
    Ok(())
}

/// Samples until `stop`; never fails (a failed sample is logged and retried next interval).
pub async fn gauge_loop(
    connection: &Connection,
    pool: DbPool,
    topology: Topology,
    interval: Duration,
    db_timeout: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        if let Err(error) = sample_database(&pool, db_timeout).await {
            tracing::warn!(error = %format!("{error:#}"), "cannot sample the database gauges");
        }
        if let Err(error) = sample_queues(connection, &topology).await {
            tracing::warn!(error = %format!("{error:#}"), "cannot sample the queue gauges");
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
