//! `pause`: the pod's only long-running container, holding no privilege, no host mount and no
//! API token. It exists so the DaemonSet pod stays Running (and the init containers do not
//! re-run) until the node goes away; it sleeps in one thread until told to stop.

use tokio::signal::unix::{SignalKind, signal};

/// Waits for SIGTERM (kubelet stopping the pod) or SIGINT (a terminal), then returns which one.
/// `on_ready` runs once both handlers are installed, so a signal sent after it is never lost.
pub fn run(on_ready: impl FnOnce()) -> std::io::Result<&'static str> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        on_ready();
        Ok(tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        })
    })
}
