//! A sealed start: on a data directory whose root key is split into shares (`kagi init
//! --shares`), `kagi serve` opens nothing until its shares come in, one per `kagi unseal`, on
//! the Unix socket `DATA_DIR/unseal.sock` (mode 0600, removed once unsealed or at exit).
//!
//! The protocol, one exchange per connection: the client writes one share's text and a newline
//! (or closes its side); the server answers one JSON line, [`Reply`], and closes. Counting, checking and recombining the shares is
//! `keystore::Unsealer`; this file is the socket around it, and the client side
//! ([`send_share`]) that `kagi unseal` calls.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

use super::ServeError;
use crate::crypto::CryptoBackend;
use crate::keystore::shares::{MAX_SHARE_TEXT, Progress};
use crate::keystore::{RootKey, ShareError, SharePolicy, Unsealer};

/// The socket's name in the data directory.
pub const SOCKET_FILE: &str = "unseal.sock";
/// How long one `kagi unseal` may take to send its share.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's answer to one share.
#[derive(Debug, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The share was taken; more are needed.
    Need {
        /// Valid shares so far.
        have: u8,
        /// Shares needed.
        threshold: u8,
    },
    /// The share was refused. With `reset`, it completed a set that does not open the
    /// keystore, and every share given so far was dropped.
    Refused {
        /// Why, for the operator.
        message: String,
        /// Whether the progress was reset.
        reset: bool,
    },
    /// The root key is rebuilt and checked; the server goes on starting.
    Unsealed,
}

/// Waits on `DATA_DIR/unseal.sock` until shares rebuild the root key of `data_dir` (split as
/// `policy` says), or `shutdown` completes (`Ok(None)`).
///
/// # Errors
/// When the socket cannot be made.
pub async fn await_unseal(
    backend: &dyn CryptoBackend,
    data_dir: &Path,
    policy: SharePolicy,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<RootKey>, ServeError> {
    let socket = SocketFile::bind(data_dir, SOCKET_FILE)?;
    tracing::info!(
        socket = %socket.path.display(),
        "sealed: the root key is split into {} shares; waiting for {} of them (kagi unseal \
         --data-dir {})",
        policy.shares(),
        policy.threshold(),
        data_dir.display()
    );
    let mut unsealer = Unsealer::new(data_dir, policy);
    loop {
        let exchange = async {
            let (stream, _) = socket.listener.accept().await?;
            Ok::<_, std::io::Error>(
                tokio::time::timeout(READ_TIMEOUT, exchange(backend, stream, &mut unsealer)).await,
            )
        };
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shut down while sealed");
                return Ok(None);
            }
            outcome = exchange => match outcome {
                Ok(Ok(Ok(Some(root)))) => {
                    tracing::info!("unsealed: the root key is rebuilt and checked");
                    return Ok(Some(root));
                }
                Ok(Ok(Ok(None))) => {}
                Ok(Ok(Err(error))) => tracing::warn!("unseal connection failed: {error}"),
                Ok(Err(_elapsed)) => tracing::warn!("unseal connection sent no share in time"),
                Err(error) => tracing::warn!("unseal socket accept failed: {error}"),
            },
        }
    }
}

/// Sends one share's text to the sealed server of `data_dir` and returns its answer.
///
/// # Errors
/// When no sealed server listens there, or the exchange fails.
pub async fn send_share(data_dir: &Path, share: &str) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(data_dir.join(SOCKET_FILE)).await?;
    let mut line = Zeroizing::new(String::with_capacity(share.len() + 1));
    line.push_str(share.trim());
    line.push('\n');
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await?;
    let mut answer = String::new();
    stream.take(64 * 1024).read_to_string(&mut answer).await?;
    serde_json::from_str(answer.trim()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "the server's answer is not JSON")
    })
}

/// One connection: read a share, submit it, answer. The root key when it completed the set.
async fn exchange(
    backend: &dyn CryptoBackend,
    stream: UnixStream,
    unsealer: &mut Unsealer,
) -> std::io::Result<Option<RootKey>> {
    let (mut read, mut write) = stream.into_split();
    // Read straight into one wiped buffer (no reader buffer, no reallocation keeps a copy of the
    // share), up to a newline or the end, one byte more than a share may have.
    let mut buffer = Zeroizing::new(vec![0u8; MAX_SHARE_TEXT + 1]);
    let mut filled = 0;
    while filled < buffer.len() {
        let n = read.read(&mut buffer[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
        if buffer[filled - n..filled].contains(&b'\n') {
            break;
        }
    }
    let line = buffer[..filled].split(|byte| *byte == b'\n').next().unwrap_or_default();
    let text = std::str::from_utf8(line).unwrap_or("");
    let (reply, root) = match unsealer.submit(backend, text) {
        Ok(Progress::Need { have, threshold }) => {
            tracing::info!("unseal: share accepted, {have} of {threshold}");
            (Reply::Need { have, threshold }, None)
        }
        Ok(Progress::Unsealed(root)) => (Reply::Unsealed, Some(root)),
        Err(error) => {
            let reset = matches!(error, ShareError::WrongShares | ShareError::Keystore(_));
            if reset {
                tracing::warn!("unseal: {error}; the shares given so far are dropped");
            } else {
                tracing::warn!("unseal: share refused: {error}");
            }
            (Reply::Refused { message: error.to_string(), reset }, None)
        }
    };
    let mut answer = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    answer.push(b'\n');
    // The key is rebuilt whether or not this client hears of it.
    if let Err(error) = write.write_all(&answer).await {
        tracing::warn!("unseal: cannot answer the client: {error}");
    }
    Ok(root)
}

/// A listening socket in the data directory, removed when dropped.
#[derive(Debug)]
pub(super) struct SocketFile {
    pub(super) listener: UnixListener,
    path: PathBuf,
}

impl SocketFile {
    /// Binds `DATA_DIR/NAME`, mode 0600 from the moment it has that name.
    pub(super) fn bind(data_dir: &Path, name: &str) -> Result<Self, ServeError> {
        let path = data_dir.join(name);
        // Bound under a temporary name, restricted, then renamed: no moment where another user
        // could connect to it. The caller holds the server lock, so files under either name
        // are left over from a server that died.
        let temporary = data_dir.join(format!(".{name}.{}", std::process::id()));
        let fail = |what: &Path, error: std::io::Error| {
            ServeError(format!("cannot make the socket {}: {error}", what.display()))
        };
        for stale in [&path, &temporary] {
            match std::fs::remove_file(stale) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(fail(stale, error));
                }
                _ => {}
            }
        }
        let listener = UnixListener::bind(&temporary).map_err(|e| fail(&temporary, e))?;
        let restrict = {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        };
        if let Err(error) = restrict.and_then(|()| std::fs::rename(&temporary, &path)) {
            let _ = std::fs::remove_file(&temporary);
            return Err(fail(&path, error));
        }
        Ok(Self { listener, path })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
