//! rtnetlink inside a namespace. A netlink socket belongs to the network
//! namespace of the thread that created it, so [`run_in`] opens it on a
//! short-lived thread inside the namespace, driven by a throwaway
//! current-thread runtime.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::Handle;

use super::{netns, NicError};

/// Runs `f` with a netlink handle on a short-lived thread inside `netns`;
/// `f` also gets the namespace path.
///
/// The runtime is built here, on the caller's thread, *before* entering the
/// namespace: tokio's signal driver creates a process-wide socket pair the
/// first time any runtime is built, and a socket pins the network namespace
/// it was created in for as long as it lives (here: forever). Built inside a
/// pod's namespace, it would keep that namespace alive after removal.
pub(crate) fn run_in<T, F, Fut>(netns: &Path, f: F) -> Result<T, NicError>
where
    T: Send + 'static,
    F: FnOnce(Handle, PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NicError>>,
{
    let runtime = runtime(netns)?;
    let ns = netns.to_path_buf();
    netns::run_in(netns, move || {
        runtime.block_on(async move {
            let (connection, handle, _) = rtnetlink::new_connection()
                .map_err(|e| NicError::netns(&ns, "open a netlink socket", e))?;
            let driver = tokio::spawn(connection);
            let result = f(handle, ns).await;
            driver.abort();
            result
        })
    })?
}

/// A current-thread runtime for netlink requests.
fn runtime(netns: &Path) -> Result<tokio::runtime::Runtime, NicError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NicError::Thread {
            netns: netns.to_path_buf(),
            message: format!("cannot build a netlink runtime: {e}"),
        })
}

/// The errno a netlink request failed with, if it was a kernel NACK.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A netlink failure as a [`NicError`], with the kernel's reason spelled out.
pub(crate) fn error(netns: &Path, device: &str, op: &'static str, e: rtnetlink::Error) -> NicError {
    let message = match errno(&e) {
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None => e.to_string(),
    };
    NicError::Netlink {
        netns: netns.to_path_buf(),
        device: device.to_owned(),
        op,
        message,
    }
}

/// The link called `name`; [`NicError::NoSuchLink`] if there is none.
pub(crate) async fn link_by_name(
    handle: &Handle,
    netns: &Path,
    name: &str,
) -> Result<LinkMessage, NicError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(NicError::NoSuchLink {
            netns: netns.to_path_buf(),
            device: name.to_owned(),
        }),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Err(NicError::NoSuchLink {
            netns: netns.to_path_buf(),
            device: name.to_owned(),
        }),
        Err(e) => Err(error(netns, name, "look up the interface", e)),
    }
}
