//! The `kagi` command against a running server: while `kagi serve` holds a data directory,
//! key commands go through its API with the operator's credentials, so policy, audit and the
//! server's caches stay right; `certs.rs` connects here too.
//!
//! The server holds an exclusive lock on `DATA_DIR/serve.lock` and writes its endpoint there;
//! a command working on the directory directly holds a shared lock, so the two never overlap.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::{
    AliasesCommand, Command, KeysCommand, Printer, RotationCommand, decode_base64, invalid,
    read_file_maybe_base64, read_input, write_output,
};
use crate::api::client::{CallError, Client, Credentials, HttpVersion, tls_config};
use crate::crypto::SecretBytes;
use crate::error::{Error, exit_code};

/// The lock file's name in the data directory.
pub(super) const LOCK_FILE: &str = "serve.lock";

/// What the server writes into its lock file.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub(super) struct ServerInfo {
    /// The server's process id.
    pub(super) pid: u32,
    /// The API address.
    pub(super) api: String,
    /// The PEM file to trust.
    pub(super) ca_bundle: PathBuf,
    /// The region of the server's ARNs (the SigV4 scope).
    pub(super) region: String,
}

/// The server's hold on a data directory: an exclusive lock, released when dropped.
#[derive(Debug)]
pub(super) struct ServerLock(File);

impl ServerLock {
    /// Takes the directory for a server.
    ///
    /// # Errors
    /// When another process (a server, or a command working directly) holds it.
    pub(super) fn acquire(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::new(exit_code::STORAGE, format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Self(file)),
            Err(TryLockError::WouldBlock) => Err(Error::new(
                exit_code::STORAGE,
                format!(
                    "{} is in use by another kagi (a running server, or a command): stop it first",
                    data_dir.display()
                ),
            )),
            Err(TryLockError::Error(e)) => {
                Err(Error::new(exit_code::STORAGE, format!("{}: {e}", path.display())))
            }
        }
    }

    /// Publishes where the server listens, for commands to find it.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub(super) fn publish(&mut self, info: &ServerInfo) -> std::io::Result<()> {
        let text = serde_json::to_vec(info).map_err(std::io::Error::other)?;
        self.0.set_len(0)?;
        std::io::Seek::rewind(&mut self.0)?;
        self.0.write_all(&text)?;
        self.0.sync_data()
    }
}

/// How a command reaches the keystore.
#[derive(Debug)]
pub(super) enum Access {
    /// Directly; the shared lock is held until the command ends.
    Direct(Option<File>),
    /// Through the server's API.
    Remote(ServerInfo),
}

/// Finds out whether a server holds `data_dir`.
pub(super) fn access(data_dir: &Path) -> Result<Access, Error> {
    let path = data_dir.join(LOCK_FILE);
    let Ok(file) = File::open(&path) else { return Ok(Access::Direct(None)) };
    match file.try_lock_shared() {
        Ok(()) => Ok(Access::Direct(Some(file))),
        Err(TryLockError::WouldBlock) => {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let info: ServerInfo = serde_json::from_str(&text).map_err(|_| {
                if data_dir.join(crate::server::unseal::SOCKET_FILE).exists() {
                    return Error::new(
                        exit_code::STORAGE,
                        format!(
                            "the server holding {} is sealed: give it its shares with `kagi \
                             unseal --data-dir {}`",
                            data_dir.display(),
                            data_dir.display()
                        ),
                    );
                }
                Error::new(
                    exit_code::STORAGE,
                    format!(
                        "a server holds {} but has not published its address yet; retry",
                        data_dir.display()
                    ),
                )
            })?;
            Ok(Access::Remote(info))
        }
        Err(TryLockError::Error(e)) => {
            Err(Error::new(exit_code::STORAGE, format!("{}: {e}", path.display())))
        }
    }
}

/// The operator's credentials: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, or else the
/// profile `AWS_PROFILE` (default `default`) of `AWS_SHARED_CREDENTIALS_FILE` (default
/// `~/.aws/credentials`), as the AWS CLI reads them.
fn credentials(region: &str) -> Result<Credentials, Error> {
    let missing = |why: String| {
        Error::new(
            exit_code::USAGE,
            format!(
                "a server holds the data directory, so this command goes through its API and \
                 needs credentials: {why}"
            ),
        )
    };
    let (akid, secret) =
        match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
            (Ok(akid), Ok(secret)) => (akid, secret),
            _ => {
                let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
                let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| Path::new(&h).join(".aws/credentials"))
                    })
                    .ok_or_else(|| {
                        missing("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into())
                    })?;
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    missing(format!(
                        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile ({}: {e})",
                        file.display()
                    ))
                })?;
                profile_credentials(&text, &profile).ok_or_else(|| {
                    missing(format!("profile [{profile}] in {} has no keys", file.display()))
                })?
            }
        };
    Ok(Credentials {
        access_key_id: akid,
        secret: SecretBytes::new(secret.into_bytes()),
        region: region.to_owned(),
    })
}

/// `aws_access_key_id` and `aws_secret_access_key` of `[profile]` in an AWS credentials file.
fn profile_credentials(text: &str, profile: &str) -> Option<(String, String)> {
    let (mut in_profile, mut akid, mut secret) = (false, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
        } else if in_profile && let Some((key, value)) = line.split_once('=') {
            match key.trim() {
                "aws_access_key_id" => akid = Some(value.trim().to_owned()),
                "aws_secret_access_key" => secret = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    Some((akid?, secret?))
}

fn api_error(error: CallError) -> Error {
    match error {
        CallError::Api(remote) => {
            let code = match remote.code_name.as_str() {
                "NotFoundException" => exit_code::NOT_FOUND,
                "DisabledException" | "KMSInvalidStateException" | "ConflictException" => {
                    exit_code::KEY_STATE
                }
                "InvalidCiphertextException"
                | "KMSInvalidSignatureException"
                | "KMSInvalidMacException"
                | "IncorrectKeyException"
                | "AccessDeniedException" => exit_code::REJECTED,
                "KMSInternalException" | "DependencyTimeoutException" => exit_code::FAILURE,
                _ => exit_code::INVALID,
            };
            Error::new(code, format!("{}: {}", remote.code_name, remote.message))
        }
        CallError::Transport(e) => Error::new(exit_code::FAILURE, e.to_string()),
    }
}

fn context_json(pairs: &[String]) -> Result<Value, Error> {
    Ok(json!(super::parse_context(pairs)?))
}

fn blob(value: &Value, name: &str) -> Result<Vec<u8>, Error> {
    let text = value[name].as_str().ok_or_else(|| invalid(format!("the answer has no {name}")))?;
    decode_base64(text.as_bytes())
}

/// Connects to the server with the operator's credentials.
///
/// # Errors
/// No credentials (exit 2); an unreachable server (exit 1).
pub(super) async fn connect(info: &ServerInfo) -> Result<Client, Error> {
    let credentials = Arc::new(credentials(&info.region)?);
    let tls = Arc::new(
        tls_config(&info.ca_bundle, HttpVersion::Http1)
            .map_err(|e| Error::new(exit_code::FAILURE, e.to_string()))?,
    );
    Client::connect(&info.api, "localhost", tls, HttpVersion::Http1, credentials)
        .await
        .map_err(|e| Error::new(exit_code::FAILURE, format!("the server is unreachable: {e}")))
}

/// Runs `command` through the server's API.
pub(super) async fn run(info: &ServerInfo, out: &Printer, command: Command) -> Result<(), Error> {
    let mut client = connect(info).await?;
    let mut call = async |operation: &str, input: Value| {
        client.call(operation, &input).await.map_err(api_error)
    };
    let document = match command {
        Command::Keys(command) => match command {
            KeysCommand::Create { spec, usage, origin, description, tags } => {
                let tags: Vec<Value> = super::parse_pairs(&tags, "tag")?
                    .into_iter()
                    .map(|(k, v)| json!({"TagKey": k, "TagValue": v}))
                    .collect();
                let mut input = json!({"KeySpec": spec, "Origin": origin, "Description": description, "Tags": tags});
                if let Some(usage) = usage {
                    input["KeyUsage"] = json!(usage);
                }
                call("CreateKey", input).await?
            }
            KeysCommand::List => call("ListKeys", json!({"Limit": 1000})).await?,
            KeysCommand::Describe { key } => call("DescribeKey", json!({"KeyId": key})).await?,
            KeysCommand::Enable { key } => call("EnableKey", json!({"KeyId": key})).await?,
            KeysCommand::Disable { key } => call("DisableKey", json!({"KeyId": key})).await?,
            KeysCommand::Rotate { key } => call("RotateKeyOnDemand", json!({"KeyId": key})).await?,
            KeysCommand::ScheduleDeletion { key, days } => {
                call("ScheduleKeyDeletion", json!({"KeyId": key, "PendingWindowInDays": days}))
                    .await?
            }
            KeysCommand::CancelDeletion { key } => {
                call("CancelKeyDeletion", json!({"KeyId": key})).await?
            }
            KeysCommand::Rotation(command) => match command {
                RotationCommand::Enable { key, period_days } => {
                    call(
                        "EnableKeyRotation",
                        json!({"KeyId": key, "RotationPeriodInDays": period_days}),
                    )
                    .await?
                }
                RotationCommand::Disable { key } => {
                    call("DisableKeyRotation", json!({"KeyId": key})).await?
                }
                RotationCommand::Status { key } => {
                    call("GetKeyRotationStatus", json!({"KeyId": key})).await?
                }
                RotationCommand::List { key } => {
                    call("ListKeyRotations", json!({"KeyId": key, "Limit": 1000})).await?
                }
            },
            KeysCommand::Tag { key, tags } => {
                let tags: Vec<Value> = super::parse_pairs(&tags, "tag")?
                    .into_iter()
                    .map(|(k, v)| json!({"TagKey": k, "TagValue": v}))
                    .collect();
                call("TagResource", json!({"KeyId": key, "Tags": tags})).await?
            }
            KeysCommand::Untag { key, tag_keys } => {
                call("UntagResource", json!({"KeyId": key, "TagKeys": tag_keys})).await?
            }
            KeysCommand::Sweep => {
                return Err(invalid(
                    "the running server sweeps by itself; `keys sweep` is for a stopped server",
                ));
            }
            KeysCommand::DeleteMaterial { key } => {
                call("DeleteImportedKeyMaterial", json!({"KeyId": key})).await?
            }
            KeysCommand::ImportParameters(_) | KeysCommand::ImportMaterial(_) => {
                return Err(not_remote("key import"));
            }
        },
        Command::Aliases(command) => match command {
            AliasesCommand::Create { name, key } => {
                call("CreateAlias", json!({"AliasName": name, "TargetKeyId": key})).await?
            }
            AliasesCommand::Update { name, key } => {
                call("UpdateAlias", json!({"AliasName": name, "TargetKeyId": key})).await?
            }
            AliasesCommand::Delete { name } => {
                call("DeleteAlias", json!({"AliasName": name})).await?
            }
            AliasesCommand::List { key } => {
                let mut input = json!({"Limit": 100});
                if let Some(key) = key {
                    input["KeyId"] = json!(key);
                }
                call("ListAliases", input).await?
            }
        },
        Command::Encrypt(a) => {
            let plaintext = read_input(&a.io, false)?;
            let answer = call(
                "Encrypt",
                json!({"KeyId": a.key, "Plaintext": BASE64.encode(&plaintext), "EncryptionContext": context_json(&a.context)?, "EncryptionAlgorithm": a.algorithm}),
            )
            .await?;
            return write_output(&a.io, &blob(&answer, "CiphertextBlob")?, true);
        }
        Command::Decrypt(a) => {
            let ciphertext = read_input(&a.io, true)?;
            let mut input = json!({"CiphertextBlob": BASE64.encode(&ciphertext), "EncryptionContext": context_json(&a.context)?});
            if let Some(key) = a.key {
                input["KeyId"] = json!(key);
            }
            if let Some(algorithm) = a.algorithm {
                input["EncryptionAlgorithm"] = json!(algorithm);
            }
            let answer = call("Decrypt", input).await?;
            return write_output(&a.io, &blob(&answer, "Plaintext")?, false);
        }
        Command::Sign(a) => {
            let message = read_input(&a.io, false)?;
            let answer = call(
                "Sign",
                json!({"KeyId": a.key, "Message": BASE64.encode(&message), "SigningAlgorithm": a.algorithm, "MessageType": if a.digest { "DIGEST" } else { "RAW" }}),
            )
            .await?;
            return write_output(&a.io, &blob(&answer, "Signature")?, true);
        }
        Command::Verify(a) => {
            let message = read_input(&a.io, false)?;
            let signature = read_file_maybe_base64(&a.signature, a.io.base64)?;
            call(
                "Verify",
                json!({"KeyId": a.key, "Message": BASE64.encode(&message), "Signature": BASE64.encode(&signature), "SigningAlgorithm": a.algorithm, "MessageType": if a.digest { "DIGEST" } else { "RAW" }}),
            )
            .await?;
            outln!("signature valid");
            return Ok(());
        }
        Command::Mac(a) => {
            let message = read_input(&a.io, false)?;
            let mut input = json!({"KeyId": a.key, "Message": BASE64.encode(&message), "MacAlgorithm": a.algorithm});
            return match &a.verify {
                Some(path) => {
                    input["Mac"] = json!(BASE64.encode(read_file_maybe_base64(path, a.io.base64)?));
                    call("VerifyMac", input).await?;
                    outln!("mac valid");
                    Ok(())
                }
                None => {
                    write_output(&a.io, &blob(&call("GenerateMac", input).await?, "Mac")?, true)
                }
            };
        }
        Command::DataKey(a) => {
            let mut input = json!({"KeyId": a.key, "EncryptionContext": context_json(&a.context)?});
            match a.bytes {
                Some(bytes) => input["NumberOfBytes"] = json!(bytes),
                None => input["KeySpec"] = json!(a.spec.unwrap_or_else(|| "AES_256".into())),
            }
            let operation = if a.without_plaintext {
                "GenerateDataKeyWithoutPlaintext"
            } else {
                "GenerateDataKey"
            };
            call(operation, input).await?
        }
        _ => return Err(not_remote("this command")),
    };
    out.document(&document);
    Ok(())
}

fn not_remote(what: &str) -> Error {
    Error::new(
        exit_code::USAGE,
        format!(
            "{what} is not available through a running server yet: use the AWS CLI or SDK against its API, or stop the server"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_like_the_aws_cli() {
        let text = "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\n\
                    [ops]\naws_access_key_id=AKIAOPS\naws_secret_access_key=s2\nregion=eu-west-1\n";
        assert_eq!(profile_credentials(text, "default"), Some(("AKIADEFAULT".into(), "s1".into())));
        assert_eq!(profile_credentials(text, "ops"), Some(("AKIAOPS".into(), "s2".into())));
        assert_eq!(profile_credentials(text, "other"), None);
    }
}
