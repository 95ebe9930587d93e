# Shadow agent image: a multi-stage build.
#
#   docker build -t shadow-agent:latest .
#
# Stage `build`: Rust stable (userspace) plus the nightly toolchain with rust-src and
# bpf-linker 0.10.4 (the eBPF programs are compiled by shadow-agent/build.rs with
# `cargo +nightly -Z build-std=core --target bpfel-unknown-none` and embedded in the binary),
# the same recipe `cargo xtask setup` installs (see ../shared/PLATFORM.md and README.md).
# Stage `runtime`: Debian slim holding only the agent binary.
#
# This image is NOT built by this repository's CI: its build machines reach the package
# registries but no container registry, so the base images cannot be pulled there. The steps
# mirror the build the tests exercise (tests/tests/deploy.rs checks that they stay so).

ARG RUST_VERSION=1.95
# The nightly the eBPF crate is built and tested with; bpf-linker 0.10.x loads this
# toolchain's own libLLVM, so both are pinned together.
ARG RUST_NIGHTLY=nightly-2026-05-19

FROM rust:${RUST_VERSION}-bookworm AS build
ARG RUST_NIGHTLY
# aya-build runs `cargo +nightly`: install the pinned nightly and link it as `nightly`.
RUN rustup toolchain install "${RUST_NIGHTLY}" --profile minimal --component rust-src \
 && rustup toolchain link nightly "$(rustc +"${RUST_NIGHTLY}" --print sysroot)" \
 && cargo +nightly install bpf-linker@0.10.4 --locked
WORKDIR /src
COPY . .
# A missing eBPF object is an error, never a stub.
ENV SHADOW_REQUIRE_EBPF=1
RUN cargo build --release -p shadow-agent --locked \
 && install -m 0755 target/release/shadow-agent /shadow-agent

FROM debian:bookworm-slim AS runtime
# The agent talks netlink, bpf(2) and cgroupfs itself; no other tool is needed at run time.
COPY --from=build /shadow-agent /usr/local/bin/shadow-agent
ENTRYPOINT ["/usr/local/bin/shadow-agent"]
CMD ["run", "--config", "/etc/shadow/agent.toml"]
