//! hyperd's Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! Two kinds:
//! * counted as things happen, kept in [`Metrics`]: boot durations per
//!   backend, execs and how long each took to start, restarts by policy;
//! * read at scrape time, in a registry of their own made for that scrape
//!   (so a removed pod's series go with it): pods by state, each running
//!   pod's VMM memory and CPU from the backend's `Vm::stats` (each bounded by
//!   [`STATS_TIMEOUT`], all read side by side), and the failed plugin calls.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// How long a scrape waits for one pod's VM figures. A VM that does not
/// answer in time is left out of that scrape and counted in
/// `hyper_scrape_stats_failures`.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds; from 50 ms (a KVM boot) to minutes (TCG under load).
const BOOT_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
];
/// Seconds from an exec request to the guest's answer that it runs.
const EXEC_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The metrics counted as things happen.
pub struct Metrics {
    registry: Registry,
    /// From the VM's launch to every container running, per backend.
    pub boot_seconds: HistogramVec,
    /// `hyper exec` calls by result (`started`, `refused`, `failed`).
    pub execs: IntCounterVec,
    /// From the exec request to the guest's answer.
    pub exec_start_seconds: HistogramVec,
    /// Restarts by a restart policy, per backend.
    pub restarts: IntCounterVec,
    /// Templates (issue 16), by event: `built`, `build_failed`,
    /// `restored`, `refused` (a template removed after its restore
    /// failed), `cold_fallback` (auto started a pod cold).
    pub templates: IntCounterVec,
    /// OOM kills, by `scope`: `guest` (a container's init, by the guest
    /// kernel) or `host` (the VMM, by its host cgroup), per backend.
    pub oom_kills: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // The names, help texts, label names and buckets are constants,
        // checked by the unit test below: these cannot fail at run time.
        let boot_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hyper_boot_duration_seconds",
                "Time from launching a pod's VM to all its containers running",
            )
            .buckets(BOOT_BUCKETS.to_vec()),
            &["backend"],
        )
        .expect("constant histogram options");
        let execs = IntCounterVec::new(
            Opts::new("hyper_execs_total", "hyper exec calls, by result"),
            &["result"],
        )
        .expect("constant counter options");
        let exec_start_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hyper_exec_start_duration_seconds",
                "Time from an exec request to the guest starting the process",
            )
            .buckets(EXEC_BUCKETS.to_vec()),
            &["backend"],
        )
        .expect("constant histogram options");
        let restarts = IntCounterVec::new(
            Opts::new(
                "hyper_restarts_total",
                "Pods booted again by their restart policy",
            ),
            &["backend"],
        )
        .expect("constant counter options");
        let templates = IntCounterVec::new(
            Opts::new(
                "hyper_template_events_total",
                "Template builds, restores, refused templates and cold fallbacks",
            ),
            &["event"],
        )
        .expect("constant counter options");
        let oom_kills = IntCounterVec::new(
            Opts::new(
                "hyper_oom_kills_total",
                "OOM kills: a container's process by the guest kernel (scope=guest) or a VMM by its host cgroup (scope=host)",
            ),
            &["scope", "backend"],
        )
        .expect("constant counter options");
        let collectors: [Box<dyn Collector>; 6] = [
            Box::new(templates.clone()),
            Box::new(oom_kills.clone()),
            Box::new(boot_seconds.clone()),
            Box::new(execs.clone()),
            Box::new(exec_start_seconds.clone()),
            Box::new(restarts.clone()),
        ];
        for c in collectors {
            if let Err(e) = registry.register(c) {
                tracing::warn!("metrics: {e}");
            }
        }
        Self {
            registry,
            boot_seconds,
            execs,
            exec_start_seconds,
            restarts,
            templates,
            oom_kills,
        }
    }

    /// The text exposition of these metrics and of `scrape`'s.
    pub fn render(&self, scrape: &Registry) -> String {
        let mut families = self.registry.gather();
        families.extend(scrape.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!("metrics: cannot encode: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One running pod's VM figures, as a scrape read them.
pub struct PodFigures {
    pub id: String,
    pub name: String,
    pub backend: String,
    pub stats: hyper_hypervisor::VmStats,
}

/// The registry of one scrape: pods by state, each pod's VMM figures,
/// how many pods' figures could not be read, and failed plugin calls.
pub fn scrape_registry(
    states: &[(&str, usize)],
    pods: &[PodFigures],
    stats_failures: usize,
    plugin_errors: &[hyper_hypervisor::plugin::CallErrors],
) -> Result<Registry, prometheus::Error> {
    let registry = Registry::new();
    let by_state = prometheus::IntGaugeVec::new(
        Opts::new("hyper_pods", "Pods hyperd knows, by state"),
        &["state"],
    )?;
    for (state, n) in states {
        by_state
            .with_label_values(&[*state])
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    registry.register(Box::new(by_state))?;

    let labels = ["pod", "name", "backend"];
    let rss = prometheus::GaugeVec::new(
        Opts::new(
            "hyper_pod_vmm_memory_rss_bytes",
            "Resident memory of a running pod's VMM process(es) on the host",
        ),
        &labels,
    )?;
    let pss = prometheus::GaugeVec::new(
        Opts::new(
            "hyper_pod_vmm_memory_pss_bytes",
            "Proportional set size of a running pod's VMM, where the backend can tell it",
        ),
        &labels,
    )?;
    let cpu = prometheus::CounterVec::new(
        Opts::new(
            "hyper_pod_vmm_cpu_seconds_total",
            "Host CPU time a running pod's VMM has used",
        ),
        &labels,
    )?;
    for p in pods {
        let values = [p.id.as_str(), p.name.as_str(), p.backend.as_str()];
        rss.with_label_values(&values).set(p.stats.rss_bytes as f64);
        if let Some(b) = p.stats.pss_bytes {
            pss.with_label_values(&values).set(b as f64);
        }
        // A fresh counter each scrape: adding the total sets it.
        cpu.with_label_values(&values)
            .inc_by(p.stats.cpu_time_ms as f64 / 1e3);
    }
    registry.register(Box::new(rss))?;
    registry.register(Box::new(pss))?;
    registry.register(Box::new(cpu))?;

    let failures = prometheus::IntGauge::new(
        "hyper_scrape_stats_failures",
        "Running pods whose VM figures this scrape could not read in time",
    )?;
    failures.set(i64::try_from(stats_failures).unwrap_or(i64::MAX));
    registry.register(Box::new(failures))?;

    let errors = prometheus::IntCounterVec::new(
        Opts::new(
            "hyper_plugin_call_errors_total",
            "Calls to a backend plugin that failed, by plugin and call",
        ),
        &["plugin", "call"],
    )?;
    for e in plugin_errors {
        errors
            .with_label_values(&[e.plugin.as_str(), e.call])
            .inc_by(e.count);
    }
    registry.register(Box::new(errors))?;
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_renders_every_family_with_its_type() {
        let m = Metrics::new();
        m.boot_seconds.with_label_values(&["qemu"]).observe(3.2);
        m.execs.with_label_values(&["started"]).inc();
        m.exec_start_seconds
            .with_label_values(&["qemu"])
            .observe(0.02);
        m.restarts.with_label_values(&["qemu"]).inc();
        let pods = [PodFigures {
            id: "abc".into(),
            name: "we\"b".into(),
            backend: "qemu".into(),
            stats: hyper_hypervisor::VmStats {
                rss_bytes: 1 << 20,
                pss_bytes: Some(1 << 19),
                cpu_time_ms: 1500,
            },
        }];
        let errors = [hyper_hypervisor::plugin::CallErrors {
            plugin: "qemu".into(),
            call: "launch",
            count: 2,
        }];
        let scrape = scrape_registry(&[("running", 1), ("exited", 0)], &pods, 1, &errors).unwrap();
        let text = m.render(&scrape);
        for line in [
            "# TYPE hyper_boot_duration_seconds histogram",
            "hyper_boot_duration_seconds_bucket{backend=\"qemu\",le=\"5\"} 1",
            "hyper_execs_total{result=\"started\"} 1",
            "# TYPE hyper_exec_start_duration_seconds histogram",
            "hyper_restarts_total{backend=\"qemu\"} 1",
            "hyper_pods{state=\"running\"} 1",
            "hyper_pods{state=\"exited\"} 0",
            "hyper_pod_vmm_memory_rss_bytes{backend=\"qemu\",name=\"we\\\"b\",pod=\"abc\"} 1048576",
            "hyper_pod_vmm_memory_pss_bytes{backend=\"qemu\",name=\"we\\\"b\",pod=\"abc\"} 524288",
            "# TYPE hyper_pod_vmm_cpu_seconds_total counter",
            "hyper_pod_vmm_cpu_seconds_total{backend=\"qemu\",name=\"we\\\"b\",pod=\"abc\"} 1.5",
            "hyper_scrape_stats_failures 1",
            "hyper_plugin_call_errors_total{call=\"launch\",plugin=\"qemu\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
