//! `hyper-plugin-host PLUGIN.so`: loads one backend plugin and serves
//! hyperd's calls to it over its stdin socket (hyper_hypervisor::plugin::host_main).

fn main() {
    std::process::exit(hyper_hypervisor::plugin::host_main());
}
