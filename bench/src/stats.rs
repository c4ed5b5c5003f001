//! Percentiles and CPU accounting.

use crate::procs::{self, Service};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Instant;

/// p50, p90, p99 and max of a set of samples (milliseconds), nearest-rank.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut samples: Vec<f64>) -> Percentiles {
        samples.retain(|s| s.is_finite());
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let index = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index]
        };
        Percentiles {
            count: samples.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
        }
    }

    pub fn json(&self) -> Value {
        json!({"count": self.count, "p50_ms": round2(self.p50), "p90_ms": round2(self.p90),
               "p99_ms": round2(self.p99), "max_ms": round2(self.max)})
    }

    pub fn row(&self) -> String {
        format!(
            "{:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// CPU seconds of every process of interest at one moment.
#[derive(Debug, Clone)]
pub struct CpuReading {
    at: Instant,
    by_process: BTreeMap<String, f64>,
}

/// The broker's and the database's server processes, found once by the ports the benchmark
/// uses (`set_server_ports`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Servers {
    pub rabbitmq: Option<u32>,
    pub postgresql: Option<u32>,
}

static SERVERS: std::sync::OnceLock<Servers> = std::sync::OnceLock::new();

/// Finds the processes listening on the broker's and the database's ports.
pub fn set_server_ports(amqp_port: u16, postgres_port: u16) -> Servers {
    *SERVERS.get_or_init(|| Servers {
        rabbitmq: procs::listener_pid(amqp_port),
        postgresql: procs::listener_pid(postgres_port),
    })
}

/// Reads the broker (beam.smp and its helpers), the database (the postmaster, its backends and
/// the backends that already exited), the load generator (this process) and the services.
pub fn read_cpu(services: &[&Service]) -> CpuReading {
    let servers = SERVERS.get().copied().unwrap_or_default();
    let mut by_process = BTreeMap::new();
    if let Some(pid) = servers.rabbitmq {
        by_process.insert("rabbitmq".to_owned(), procs::tree_cpu_seconds(pid));
    }
    if let Some(pid) = servers.postgresql {
        by_process.insert("postgresql".to_owned(), procs::tree_cpu_seconds(pid));
    }
    by_process.insert("load generator".to_owned(), procs::own_cpu_seconds());
    for service in services {
        by_process.insert(service.name.clone(), service.cpu_seconds());
    }
    CpuReading {
        at: Instant::now(),
        by_process,
    }
}

/// CPU seconds spent by each process between two readings, and the wall time.
#[derive(Debug, Clone, Default)]
pub struct CpuSpent {
    pub wall_seconds: f64,
    pub by_process: BTreeMap<String, f64>,
}

impl CpuSpent {
    pub fn between(before: &CpuReading, after: &CpuReading) -> CpuSpent {
        let by_process = after
            .by_process
            .iter()
            .map(|(name, end)| {
                let start = before.by_process.get(name).copied().unwrap_or(0.0);
                (name.clone(), (end - start).max(0.0))
            })
            .collect();
        CpuSpent {
            wall_seconds: after.at.duration_since(before.at).as_secs_f64(),
            by_process,
        }
    }

    pub fn total(&self) -> f64 {
        self.by_process.values().sum()
    }

    pub fn json(&self) -> Value {
        let mut processes = serde_json::Map::new();
        for (name, seconds) in &self.by_process {
            processes.insert(name.clone(), json!(round2(*seconds)));
        }
        json!({"wall_s": round2(self.wall_seconds), "cpu_s": processes,
               "cpu_total_s": round2(self.total())})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let one = Percentiles::of(vec![7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(Percentiles::of(vec![]).count, 0);
    }
}
