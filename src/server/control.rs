//! The server's control socket, `DATA_DIR/control.sock` (mode 0600, for as long as the server
//! runs): what only the holder of the data directory may ask, and that is no KMS operation.
//! Today one request, a root key rotation (`kagi root-key rotate` while the server serves).
//!
//! The protocol, one exchange per connection: the client writes one JSON [`Request`] and a
//! newline; the server answers one JSON [`Reply`] line once the work is done, and closes. The
//! socket's mode is the authority: whoever can open it can already read `root.key`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

use super::ServeError;
use super::unseal::SocketFile;
use crate::keystore::{Keystore, NextRoot, NextRootWire, OpContext, RootRotation};

/// The socket's name in the data directory.
pub const SOCKET_FILE: &str = "control.sock";
/// The longest request read.
const MAX_REQUEST: usize = 64 * 1024;

/// What a client asks.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Rotate the root key to `next` (made by the client, of the current key's kind).
    RotateRoot {
        /// The new root key.
        next: NextRootWire,
    },
}

/// The server's answer.
#[derive(Debug, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The rotation committed.
    Rotated(RootRotation),
    /// It failed; what to tell the operator.
    Failed {
        /// Why.
        message: String,
    },
}

/// The listening socket and its task; both end when dropped.
#[derive(Debug)]
pub struct Control {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `DATA_DIR/control.sock` and serves it for `keystore`; also resumes a root key
/// rotation a crash interrupted.
///
/// # Errors
/// When the socket cannot be made.
/// `settle` is how long other nodes on the same store take to see the new key (see
/// [`Keystore::rotate_root`]).
pub fn start(
    keystore: Arc<Keystore>,
    data_dir: &Path,
    settle: Duration,
) -> Result<Control, ServeError> {
    let socket = SocketFile::bind(data_dir, SOCKET_FILE)?;
    let data_dir = data_dir.to_owned();
    if keystore.root_rotation_pending() {
        let keystore = Arc::clone(&keystore);
        let data_dir = data_dir.clone();
        tokio::spawn(async move {
            tracing::info!("resuming the root key rotation a stop interrupted");
            // Its outcome is logged and audited by the keystore.
            let _ = keystore.finish_root_rotation(&context(), &data_dir, settle).await;
        });
    }
    let task = tokio::spawn(async move {
        loop {
            match socket.listener.accept().await {
                Ok((stream, _)) => {
                    let keystore = Arc::clone(&keystore);
                    let data_dir = data_dir.clone();
                    tokio::spawn(async move {
                        if let Err(error) = exchange(&keystore, &data_dir, settle, stream).await {
                            tracing::warn!("control connection failed: {error}");
                        }
                    });
                }
                Err(error) => tracing::warn!("control socket accept failed: {error}"),
            }
        }
    });
    Ok(Control { task })
}

/// Who asks through the socket, as the audit trail names it.
fn context() -> OpContext {
    OpContext {
        principal: "kagi-root-key-custodian".into(),
        source: "control.sock".into(),
        request_id: format!("control-{}", std::process::id()),
    }
}

async fn exchange(
    keystore: &Keystore,
    data_dir: &Path,
    settle: Duration,
    stream: UnixStream,
) -> std::io::Result<()> {
    let (mut read, mut write) = stream.into_split();
    // The request carries a root key: read into one wiped buffer.
    let mut buffer = Zeroizing::new(vec![0u8; MAX_REQUEST]);
    let mut filled = 0;
    while filled < buffer.len() {
        let n = read.read(&mut buffer[filled..]).await?;
        if n == 0 || buffer[filled..filled + n].contains(&b'\n') {
            filled += n;
            break;
        }
        filled += n;
    }
    let line = buffer[..filled].split(|byte| *byte == b'\n').next().unwrap_or_default();
    let reply = match serde_json::from_slice::<Request>(line) {
        Err(_) => Reply::Failed { message: "malformed control request".into() },
        Ok(Request::RotateRoot { next }) => match NextRoot::from_wire(keystore.backend(), &next) {
            Err(error) => Reply::Failed { message: error.message().to_owned() },
            Ok(next) => match keystore.rotate_root(&context(), data_dir, next, settle).await {
                Ok(done) => Reply::Rotated(done),
                Err(error) => Reply::Failed { message: error.message().to_owned() },
            },
        },
    };
    let mut answer = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    answer.push(b'\n');
    write.write_all(&answer).await
}

/// Sends `request` to the server of `data_dir` and waits for its answer (a rotation takes as
/// long as re-sealing every key).
///
/// # Errors
/// When no server listens there, or the exchange fails.
pub async fn send(data_dir: &Path, request: &Request) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(data_dir.join(SOCKET_FILE)).await?;
    // Sized once, so no reallocation leaves a copy of the key behind.
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_REQUEST));
    serde_json::to_writer(&mut *line, request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await?;
    let mut answer = String::new();
    stream.take(64 * 1024).read_to_string(&mut answer).await?;
    serde_json::from_str(answer.trim()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "the server's answer is not JSON")
    })
}
