//! The fast test suites, one test binary (one link of kube, tokio and rustls): the built binary
//! run as the CLI against temporary host directories, a fake securityfs and the real
//! `apparmor_parser`; `untaint` against a mocked API server; the skip-or-fail rule of the
//! harnesses. The QEMU, API-server and node suites are targets of their own
//! (`kernel_e2e`, `kernel_fail_closed`, `apiserver_e2e`, `node_e2e`).

mod api_mock;
mod support;

mod copy;
mod fail_closed;
mod kernel_features;
mod load;
mod lock;
mod parser_cache;
mod parser_conf;
mod pause_untaint;
mod prereq_rule;
mod profiles_fail_closed;
mod untaint_gate_keys;
mod untaint_mock;
