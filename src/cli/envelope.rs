//! `kagi envelope encrypt|decrypt`: AWS Encryption SDK messages, streamed from stdin to stdout.
//!
//! The data key comes from the keystore directly when no server runs (as every direct command,
//! without consulting key policies), or through the running server's KMS API (as the
//! operator's credentials' principal, under the key policies).

use std::io::Write as _;

use clap::{Args as ClapArgs, Subcommand};

use super::{invalid, parse_context};
use crate::envelope::{
    self, DecryptOptions, Decryptor, EncryptOptions, Encryptor, KeyService, Suite,
};
use crate::error::{Error, exit_code};
use crate::keystore::ErrorKind;

/// How much stdin is read at a time.
const CHUNK: usize = 64 * 1024;

/// `kagi envelope …`.
#[derive(Clone, Debug, Subcommand)]
pub enum EnvelopeCommand {
    /// Encrypts stdin into one AWS Encryption SDK message (format version 2, framed) on
    /// stdout, with a data key generated under KEY. The official SDKs decrypt it through
    /// kagi's KMS API.
    Encrypt(EnvelopeEncryptArgs),
    /// Decrypts the AWS Encryption SDK message on stdin (suites 0x0478 and 0x0578, framed)
    /// whose data key is under KEY, to stdout. Plaintext is written frame by frame as each
    /// frame authenticates; on failure (exit 5: tampered, truncated, another key or context)
    /// what was written is only the frames before the failure, so discard the output of a
    /// failed run. A signed message's signature is checked at its end.
    Decrypt(EnvelopeDecryptArgs),
}

/// `kagi envelope encrypt`.
#[derive(Clone, Debug, ClapArgs)]
pub struct EnvelopeEncryptArgs {
    /// Key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    pub key: String,
    /// An encryption context pair, KEY=VALUE (repeatable).
    #[arg(long = "context")]
    pub context: Vec<String>,
    /// The algorithm suite: 0478 (AES-256-GCM, HKDF-SHA512, key commitment) or 0578 (the same,
    /// signed with ECDSA P-384).
    #[arg(long, default_value = "0478")]
    pub suite: String,
    /// Plaintext bytes per frame (1 to 16 MiB).
    #[arg(long, default_value_t = envelope::format::DEFAULT_FRAME_LENGTH)]
    pub frame_length: u32,
}

/// `kagi envelope decrypt`.
#[derive(Clone, Debug, ClapArgs)]
pub struct EnvelopeDecryptArgs {
    /// The key the message's data key must be under (id, ARN or alias).
    #[arg(long)]
    pub key: String,
    /// The encryption context the message must have, KEY=VALUE (repeatable); exactly these
    /// pairs (the signing suite's public key aside).
    #[arg(long = "context")]
    pub context: Vec<String>,
}

/// Runs `command` with data keys from `keys`, acting as `principal`.
pub(super) async fn run(
    keys: &dyn KeyService,
    principal: &str,
    command: EnvelopeCommand,
) -> Result<(), Error> {
    if let Some(why) = envelope::FIPS_REFUSAL {
        return Err(Error::new(exit_code::USAGE, why));
    }
    match command {
        EnvelopeCommand::Encrypt(a) => encrypt(keys, principal, a).await,
        EnvelopeCommand::Decrypt(a) => decrypt(keys, principal, a).await,
    }
}

async fn encrypt(
    keys: &dyn KeyService,
    principal: &str,
    a: EnvelopeEncryptArgs,
) -> Result<(), Error> {
    let suite = match a.suite.trim_start_matches("0x") {
        "0478" | "478" => Suite::Aes256GcmHkdfSha512CommitKey,
        "0578" | "578" => Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
        other => return Err(invalid(format!("unknown suite {other:?}: use 0478 or 0578"))),
    };
    let options = EncryptOptions { suite, frame_length: a.frame_length };
    let context = parse_context(&a.context)?;
    let mut encryptor = Encryptor::begin(keys, principal, &a.key, context, options)
        .await
        .map_err(envelope_error)?;
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut chunk = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
    let mut out = Vec::with_capacity(CHUNK + 4096);
    loop {
        let n = read(&mut stdin, &mut chunk)?;
        if n == 0 {
            break;
        }
        encryptor.update(&chunk[..n], &mut out).map_err(envelope_error)?;
        write(&mut stdout, &mut out)?;
    }
    encryptor.finish(&mut out).map_err(envelope_error)?;
    write(&mut stdout, &mut out)?;
    stdout.flush().map_err(stdout_error)
}

async fn decrypt(
    keys: &dyn KeyService,
    principal: &str,
    a: EnvelopeDecryptArgs,
) -> Result<(), Error> {
    let key_arn = keys.key_arn(principal, &a.key).await.map_err(|e| envelope_error(e.into()))?;
    let context = parse_context(&a.context)?;
    let mut decryptor = Decryptor::new(DecryptOptions { key_arn, context });
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut chunk = vec![0u8; CHUNK];
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(CHUNK + 4096));
    loop {
        let n = read(&mut stdin, &mut chunk)?;
        if n == 0 {
            break;
        }
        decryptor.update(&chunk[..n], &mut out).map_err(envelope_error)?;
        decryptor.fetch_data_key(keys, principal, &mut out).await.map_err(envelope_error)?;
        write(&mut stdout, &mut out)?;
    }
    decryptor.finish().map_err(envelope_error)?;
    stdout.flush().map_err(stdout_error)
}

fn read(stdin: &mut impl std::io::Read, buffer: &mut [u8]) -> Result<usize, Error> {
    loop {
        match stdin.read(buffer) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(invalid(format!("stdin: {e}"))),
        }
    }
}

fn write(stdout: &mut impl std::io::Write, out: &mut Vec<u8>) -> Result<(), Error> {
    stdout.write_all(out).map_err(stdout_error)?;
    zeroize::Zeroize::zeroize(&mut out[..]);
    out.clear();
    Ok(())
}

fn stdout_error(error: std::io::Error) -> Error {
    Error::new(exit_code::FAILURE, format!("stdout: {error}"))
}

/// Maps an envelope error to its exit code (as README.md documents them).
fn envelope_error(error: envelope::Error) -> Error {
    use envelope::Error as E;
    let code = match &error {
        E::KeyService(service) => kind_exit_code(service.kind()),
        E::Internal(_) => exit_code::FAILURE,
        error if error.is_message_fault() => exit_code::REJECTED,
        _ => exit_code::INVALID,
    };
    Error::new(code, error.to_string())
}

/// The exit code of a KMS error kind, as for the other key commands.
fn kind_exit_code(kind: ErrorKind) -> u8 {
    use ErrorKind as K;
    match kind {
        K::NotFound => exit_code::NOT_FOUND,
        K::Disabled | K::InvalidState | K::Conflict => exit_code::KEY_STATE,
        K::InvalidCiphertext | K::InvalidSignature | K::InvalidMac | K::IncorrectKey => {
            exit_code::REJECTED
        }
        K::AccessDenied => exit_code::REJECTED,
        K::DependencyTimeout | K::Internal => exit_code::FAILURE,
        _ => exit_code::INVALID,
    }
}
