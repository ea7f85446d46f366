//! TLS session tickets every node of a cluster can open: sealed with AES-256-GCM under a key
//! derived from a secret the nodes share (itself derived from the root key, which every node
//! holds), one key per [`PERIOD`]. A ticket opens during its period and the next, on any node,
//! across reloads and restarts; a client holding an older one does a full handshake.
//!
//! A ticket is `period (8 bytes, big-endian) ‖ nonce (12) ‖ AES-256-GCM(state) ‖ tag (16)`,
//! with the period as additional data.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::crypto::{AesKey, CryptoBackend, NONCE_LEN, SecretBytes};

/// The HKDF salt of the ticket keys. Empty, as it always was, except in a FIPS build: the FIPS
/// module does not approve HKDF with an empty salt, so FIPS nodes derive other ticket keys and a
/// ticket from a node of the other kind gets a full handshake.
const TICKET_SALT: &[u8] = if crate::crypto::FIPS { b"kagi tls ticket key" } else { b"" };

/// How long one ticket key seals new tickets, in seconds.
const PERIOD: u64 = 6 * 3600;

/// Tickets under keys derived from a shared secret.
pub struct SharedTicketer {
    backend: &'static dyn CryptoBackend,
    secret: SecretBytes,
    /// The keys of the periods last used (at most two), so each is derived once.
    keys: Mutex<Vec<(u64, std::sync::Arc<AesKey>)>>,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer").finish_non_exhaustive()
    }
}

impl SharedTicketer {
    /// A ticketer whose keys derive from `secret` (32 bytes shared by every node).
    pub fn new(backend: &'static dyn CryptoBackend, secret: SecretBytes) -> Self {
        Self { backend, secret, keys: Mutex::new(Vec::new()) }
    }

    fn key(&self, period: u64) -> Option<std::sync::Arc<AesKey>> {
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, key)) = keys.iter().find(|(p, _)| *p == period) {
            return Some(std::sync::Arc::clone(key));
        }
        let mut bytes = SecretBytes::zeroed(32);
        let mut info = b"kagi tls ticket key v1 ".to_vec();
        info.extend_from_slice(&period.to_be_bytes());
        self.backend
            .hkdf_sha512(TICKET_SALT, self.secret.expose_secret(), &info, bytes.expose_secret_mut())
            .ok()?;
        let key = std::sync::Arc::new(AesKey::from_slice(bytes.expose_secret()).ok()?);
        keys.retain(|(p, _)| p + 1 >= period);
        keys.push((period, std::sync::Arc::clone(&key)));
        Some(key)
    }

    fn now_period() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / PERIOD
    }

    /// Seals `plain` under the current period's key.
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(Self::now_period(), plain)
    }

    /// Opens a ticket of the current or the previous period.
    pub fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open_at(Self::now_period(), ticket)
    }

    fn seal_at(&self, period: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.key(period)?;
        let aad = period.to_be_bytes();
        let (nonce, sealed) = self.backend.seal_fresh(&key, &aad, plain).ok()?;
        let mut ticket = Vec::with_capacity(8 + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&aad);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn open_at(&self, now: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        let (period, rest) = ticket.split_first_chunk::<8>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let period_number = u64::from_be_bytes(*period);
        if period_number != now && period_number + 1 != now {
            return None;
        }
        let key = self.key(period_number)?;
        let plain = self.backend.open(&key, nonce, period, sealed).ok()?;
        Some(plain.expose_secret().to_vec())
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        PERIOD as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticketer(secret: u8) -> SharedTicketer {
        let backend = crate::crypto::BackendKind::AwsLc.backend();
        SharedTicketer::new(backend, SecretBytes::new(vec![secret; 32]))
    }

    #[test]
    fn any_node_with_the_secret_opens_a_ticket() {
        let (a, b) = (ticketer(1), ticketer(1));
        let ticket = a.seal_at(100, b"session state").expect("seal");
        assert_eq!(b.open_at(100, &ticket).as_deref(), Some(&b"session state"[..]));
        // Into the next period, still; two periods on, no longer.
        assert!(b.open_at(101, &ticket).is_some());
        assert!(b.open_at(102, &ticket).is_none());
        // Not before it was made either.
        assert!(b.open_at(99, &ticket).is_none());
    }

    #[test]
    fn another_secret_or_a_changed_byte_opens_nothing() {
        let ticket = ticketer(1).seal_at(7, b"state").expect("seal");
        assert!(ticketer(2).open_at(7, &ticket).is_none());
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert!(ticketer(1).open_at(7, &bad).is_none(), "byte {i}");
        }
        for len in 0..ticket.len() {
            assert!(ticketer(1).open_at(7, &ticket[..len]).is_none());
        }
    }
}
