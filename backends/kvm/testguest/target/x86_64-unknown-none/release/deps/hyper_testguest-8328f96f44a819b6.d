/work/wt/volkvm/backends/kvm/testguest/target/x86_64-unknown-none/release/deps/hyper_testguest-8328f96f44a819b6.d: src/main.rs src/io.rs src/virtio.rs Cargo.toml

/work/wt/volkvm/backends/kvm/testguest/target/x86_64-unknown-none/release/deps/libhyper_testguest-8328f96f44a819b6.rmeta: src/main.rs src/io.rs src/virtio.rs Cargo.toml

src/main.rs:
src/io.rs:
src/virtio.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=
# env-dep:CLIPPY_CONF_DIR
