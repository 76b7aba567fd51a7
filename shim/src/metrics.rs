//! The task Stats answer: containerd (`ctr task metrics`, CRI's
//! ContainerStats) decodes a cgroups v1 `Metrics`
//! (`io.containerd.cgroups.v1.Metrics`). A task's processes live in the
//! pod's VM, so the figures are the VM's host side, as `hyper stats` reads
//! them: the resident memory and CPU time of the VMM process(es). Every
//! container of a CRI pod shares its VM and reports the same figures.

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics,
};
use containerd_shim::protos::protobuf::MessageField;
use hyper_hypervisor::VmStats;

/// The cgroups v1 metrics of a VM's host figures.
pub fn of_vm(vm: &VmStats) -> Metrics {
    let rss = vm.rss_bytes;
    Metrics {
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                // Nanoseconds, as cpuacct.usage.
                total: vm.cpu_time_ms.saturating_mul(1_000_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            rss,
            total_rss: rss,
            usage: MessageField::some(MemoryEntry {
                usage: rss,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    #[test]
    fn vm_figures_become_cgroup_v1_metrics_containerd_decodes() {
        let m = of_vm(&VmStats {
            rss_bytes: 64 << 20,
            pss_bytes: None,
            cpu_time_ms: 1500,
        });
        let any = containerd_shim::util::convert_to_any(Box::new(m)).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.cpu.usage.total, 1_500_000_000);
        assert_eq!(back.memory.usage.usage, 64 << 20);
        assert_eq!(back.memory.rss, 64 << 20);
    }
}
